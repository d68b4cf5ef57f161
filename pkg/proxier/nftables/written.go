package nftables

import (
	"net/netip"
	"slices"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// written is what proxyd last wrote into one family's table, kept per
// service port so that a change touches only what it changed.
type written struct {
	family     model.IPFamily
	base       []*nft.Chain
	services   map[model.ServicePortKey]serviceRules
	clusterIPs map[netip.Addr]int // reference counts: ports sharing a VIP
	hairpin    map[netip.Addr]int // reference counts: endpoints in several ports
	chains     int
	dynSets    int // session-affinity sets
	// needFull is set when an update cannot be written incrementally (an
	// affinity set whose definition, its timeout, changed must be
	// recreated).
	needFull bool
}

func newWritten(base []*nft.Chain, f model.IPFamily) *written {
	return &written{family: f, base: base, services: map[model.ServicePortKey]serviceRules{},
		clusterIPs: map[netip.Addr]int{}, hairpin: map[netip.Addr]int{}, chains: len(base)}
}

// objects is how many chains and sets the table holds: what the kernel
// reports as the table's use count.
func (w *written) objects() int { return w.chains + len(newSets(w.family).all()) + w.dynSets }

func (w *written) add(k model.ServicePortKey, sr serviceRules) {
	w.services[k] = sr
	w.clusterIPs[sr.clusterIP]++
	for _, ip := range sr.hairpin {
		w.hairpin[ip]++
	}
	w.chains += len(sr.chains)
	w.dynSets += len(sr.sets)
}

func (w *written) remove(k model.ServicePortKey) {
	sr, ok := w.services[k]
	if !ok {
		return
	}
	delete(w.services, k)
	decrement(w.clusterIPs, sr.clusterIP)
	for _, ip := range sr.hairpin {
		decrement(w.hairpin, ip)
	}
	w.chains -= len(sr.chains)
	w.dynSets -= len(sr.sets)
}

func decrement(m map[netip.Addr]int, a netip.Addr) {
	if m[a]--; m[a] <= 0 {
		delete(m, a)
	}
}

// presence remembers whether shared elements existed before an update,
// so that only those whose existence changed are written.
type presence map[netip.Addr]bool

func (p presence) note(counts map[netip.Addr]int, addrs ...netip.Addr) {
	for _, a := range addrs {
		if _, seen := p[a]; !seen {
			p[a] = counts[a] > 0
		}
	}
}

func (p presence) changes(counts map[netip.Addr]int, elem func(netip.Addr) nft.Element) (del, add []nft.Element) {
	for a, was := range p {
		switch now := counts[a] > 0; {
		case was && !now:
			del = append(del, elem(a))
		case !was && now:
			add = append(add, elem(a))
		}
	}
	return del, add
}

// update moves w to s for the ports in changed, and returns the plan that
// does the same to the kernel. Base chains are compared whole: they are
// few and small. w must be discarded if the plan fails.
func (w *written) update(s *model.State, changed []model.ServicePortKey, cfg proxier.Config, f model.IPFamily) Plan {
	p := Plan{Family: f}
	sets := newSets(f)
	var newChains, changedChains, goneChains []*nft.Chain
	var newSets, goneSets []*nft.Set
	del, add := map[*nft.Set][]nft.Element{}, map[*nft.Set][]nft.Element{}

	base := renderBase(s, cfg, f)
	for i, c := range base {
		if !sameRules(w.base[i], c, f) {
			changedChains = append(changedChains, c)
		}
	}
	w.base = base

	vips, pins := presence{}, presence{}
	for _, k := range changed {
		old, hadOld := w.services[k]
		var next serviceRules
		hasNext := false
		if sp := s.Services[k]; sp != nil {
			next, hasNext = renderServicePort(sp, cfg, f)
		}
		if hadOld {
			vips.note(w.clusterIPs, old.clusterIP)
			pins.note(w.hairpin, old.hairpin...)
			w.remove(k)
		}
		if hasNext {
			vips.note(w.clusterIPs, next.clusterIP)
			pins.note(w.hairpin, next.hairpin...)
			w.add(k, next)
		}
		added, gone := matchByName(old.chains, next.chains, func(c *nft.Chain) string { return c.Name }, func(o, n *nft.Chain) {
			if !sameRules(o, n, f) {
				changedChains = append(changedChains, n)
			}
		})
		newChains, goneChains = append(newChains, added...), append(goneChains, gone...)
		addedSets, droppedSets := matchByName(old.sets, next.sets, func(s *nft.Set) string { return s.Name }, func(o, n *nft.Set) {
			if o.Definition() != n.Definition() {
				w.needFull = true
			}
		})
		newSets, goneSets = append(newSets, addedSets...), append(goneSets, droppedSets...)
		diffElements(del, add, sets.serviceIPs, old.dispatch, next.dispatch)
		diffElements(del, add, sets.nodePorts, old.nodePort, next.nodePort)
		diffElements(del, add, sets.noEndpoints, old.noEndpoint, next.noEndpoint)
		diffElements(del, add, sets.noEndpointNodePorts, old.noEndpointNodePort, next.noEndpointNodePort)
	}
	del[sets.clusterIPs], add[sets.clusterIPs] = vips.changes(w.clusterIPs, vipElement)
	del[sets.hairpin], add[sets.hairpin] = pins.changes(w.hairpin, hairpinElement)

	for _, set := range newSets {
		p.Ops = append(p.Ops, Op{Kind: OpAddSet, Set: set})
	}
	for _, c := range newChains {
		p.Ops = append(p.Ops, Op{Kind: OpAddChain, Chain: c})
		for _, r := range c.Rules {
			p.Ops = append(p.Ops, Op{Kind: OpAddRule, Chain: c, Rule: r})
		}
	}
	for _, c := range changedChains {
		p.Ops = append(p.Ops, Op{Kind: OpFlushChain, Chain: c})
		for _, r := range c.Rules {
			p.Ops = append(p.Ops, Op{Kind: OpAddRule, Chain: c, Rule: r})
		}
	}
	for _, set := range sets.all() {
		if len(del[set]) > 0 {
			slices.SortFunc(del[set], nft.CompareElements)
			p.Ops = append(p.Ops, Op{Kind: OpDelElements, Set: set, Elements: del[set]})
		}
	}
	for _, set := range sets.all() {
		if len(add[set]) > 0 {
			slices.SortFunc(add[set], nft.CompareElements)
			p.Ops = append(p.Ops, Op{Kind: OpAddElements, Set: set, Elements: add[set]})
		}
	}
	// An external chain may jump to the service chain: flush every gone
	// chain before deleting any.
	for _, c := range goneChains {
		p.Ops = append(p.Ops, Op{Kind: OpFlushChain, Chain: c})
	}
	for _, c := range goneChains {
		p.Ops = append(p.Ops, Op{Kind: OpDelChain, Chain: c})
	}
	for _, set := range goneSets {
		p.Ops = append(p.Ops, Op{Kind: OpDelSet, Set: set})
	}
	return p
}

// matchByName pairs old and next objects by name: added are only in next,
// gone only in old, and kept is called for each pair found in both.
func matchByName[T any](old, next []T, name func(T) string, kept func(o, n T)) (added, gone []T) {
	byName := make(map[string]T, len(old))
	for _, o := range old {
		byName[name(o)] = o
	}
	for _, n := range next {
		if o, ok := byName[name(n)]; ok {
			kept(o, n)
			delete(byName, name(n))
		} else {
			added = append(added, n)
		}
	}
	for _, o := range old {
		if _, ok := byName[name(o)]; ok {
			gone = append(gone, o)
		}
	}
	return added, gone
}

// diffElements queues the elements of old missing from next for deletion
// and those of next missing from old for addition; a changed verdict is
// both.
func diffElements(del, add map[*nft.Set][]nft.Element, set *nft.Set, old, next []nft.Element) {
	have := map[string]bool{}
	for _, e := range old {
		have[elementID(set, e)] = true
	}
	want := map[string]bool{}
	for _, e := range next {
		id := elementID(set, e)
		want[id] = true
		if !have[id] {
			add[set] = append(add[set], e)
		}
	}
	for _, e := range old {
		if !want[elementID(set, e)] {
			del[set] = append(del[set], e)
		}
	}
}

func vipElement(ip netip.Addr) nft.Element { return nft.Element{Key: []nft.Value{nft.AddrValue(ip)}} }
func hairpinElement(ip netip.Addr) nft.Element {
	return nft.Element{Key: []nft.Value{nft.AddrValue(ip), nft.AddrValue(ip)}}
}
