package nftables

import (
	"maps"
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
	picks      map[pickKey]int    // reference counts: ports sharing a pick chain
	chains     int
	svcSets    int // sets of service ports: affinity sets and endpoint maps
	// needFull is set when an update cannot be written incrementally (an
	// affinity set whose definition, its timeout, changed must be
	// recreated).
	needFull bool
}

func newWritten(base []*nft.Chain, f model.IPFamily) *written {
	return &written{family: f, base: base, services: map[model.ServicePortKey]serviceRules{},
		clusterIPs: map[netip.Addr]int{}, hairpin: map[netip.Addr]int{}, picks: map[pickKey]int{}, chains: len(base)}
}

func (w *written) add(k model.ServicePortKey, sr serviceRules) {
	w.services[k] = sr
	w.clusterIPs[sr.clusterIP]++
	for _, ip := range sr.hairpin {
		w.hairpin[ip]++
	}
	w.chains += len(sr.chains)
	w.svcSets += len(sr.sets) + len(sr.maps)
	if sr.pick.n > 0 {
		w.picks[sr.pick]++
	}
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
	w.svcSets -= len(sr.sets) + len(sr.maps)
	if sr.pick.n > 0 {
		if w.picks[sr.pick]--; w.picks[sr.pick] <= 0 {
			delete(w.picks, sr.pick)
		}
	}
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
	var newSets, goneSets, newMaps, keptMaps []*nft.Set
	del, add := map[*nft.Set][]nft.Element{}, map[*nft.Set][]nft.Element{}

	base := renderBase(s, cfg, f)
	for i, c := range base {
		if !sameRules(w.base[i], c, f) {
			changedChains = append(changedChains, c)
		}
	}
	w.base = base

	vips, pins := presence{}, presence{}
	picksBefore := map[pickKey]bool{}
	for _, k := range changed {
		old, hadOld := w.services[k]
		var next serviceRules
		hasNext := false
		if sp := s.Services[k]; sp != nil {
			next, hasNext = renderServicePort(sp, cfg, f)
		}
		if hadOld {
			if _, seen := picksBefore[old.pick]; !seen && old.pick.n > 0 {
				picksBefore[old.pick] = true
			}
			vips.note(w.clusterIPs, old.clusterIP)
			pins.note(w.hairpin, old.hairpin...)
			w.remove(k)
		}
		if hasNext {
			if _, seen := picksBefore[next.pick]; !seen && next.pick.n > 0 {
				picksBefore[next.pick] = w.picks[next.pick] > 0
			}
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
		addedMaps, droppedMaps := matchByName(old.maps, next.maps, func(s *nft.Set) string { return s.Name }, func(o, n *nft.Set) {
			if o.Definition() != n.Definition() {
				w.needFull = true
			}
			diffElements(del, add, n, o.Elements, n.Elements)
			keptMaps = append(keptMaps, n)
		})
		newMaps, goneSets = append(newMaps, addedMaps...), append(goneSets, droppedMaps...)
		diffElements(del, add, sets.serviceIPs, old.dispatch, next.dispatch)
		diffElements(del, add, sets.nodePorts, old.nodePort, next.nodePort)
		diffElements(del, add, sets.noEndpoints, old.noEndpoint, next.noEndpoint)
		diffElements(del, add, sets.noEndpointNodePorts, old.noEndpointNodePort, next.noEndpointNodePort)
		diffElements(del, add, sets.endpoints[k.Protocol], old.endpoints, next.endpoints)
	}
	// A pick chain comes with the first port of its protocol and count,
	// and goes with the last.
	for k, was := range picksBefore {
		switch now := w.picks[k] > 0; {
		case !was && now:
			newChains = append(newChains, renderPickChain(k, cfg, f))
		case was && !now:
			goneChains = append(goneChains, renderPickChain(k, cfg, f))
		}
	}
	del[sets.clusterIPs], add[sets.clusterIPs] = vips.changes(w.clusterIPs, vipElement)
	del[sets.hairpin], add[sets.hairpin] = pins.changes(w.hairpin, hairpinElement)

	for _, set := range slices.Concat(newSets, newMaps) {
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
	for _, set := range slices.Concat(sets.all(), keptMaps) {
		if len(del[set]) > 0 {
			slices.SortFunc(del[set], nft.CompareElements)
			p.Ops = append(p.Ops, Op{Kind: OpDelElements, Set: set, Elements: del[set]})
		}
	}
	for _, set := range slices.Concat(sets.all(), keptMaps) {
		if len(add[set]) > 0 {
			slices.SortFunc(add[set], nft.CompareElements)
			p.Ops = append(p.Ops, Op{Kind: OpAddElements, Set: set, Elements: add[set]})
		}
	}
	for _, m := range newMaps {
		p.Ops = append(p.Ops, Op{Kind: OpAddElements, Set: m, Elements: m.Elements})
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

// clone is a copy of w that update can change while w stays what the
// kernel holds.
func (w *written) clone() *written {
	c := *w
	c.services = maps.Clone(w.services)
	c.clusterIPs = maps.Clone(w.clusterIPs)
	c.hairpin = maps.Clone(w.hairpin)
	c.picks = maps.Clone(w.picks)
	return &c
}
