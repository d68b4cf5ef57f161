package iptables

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
)

// written is what a family's proxyd chains hold after the last successful
// write, as rendered text: a digest of each chain proxyd owns alone, and
// the text of each service port's part of the shared chains. A sync
// renders what changed and writes every chain whose text differs, so no
// field of the model can be forgotten. It is trusted only while no write
// failed.
type written struct {
	node  model.Node
	cidrs []netip.Prefix // the family's ServiceCIDRs
	base  [len(baseTables)]chainSum
	// heads and tails are the shared chains' rules before and after the
	// service ports' parts.
	heads, tails [numParts]string
	sps          map[model.ServicePortKey]*spWritten
	// rules and chains count what proxyd's chains of the family hold.
	rules, chains int
}

// chainSum is one written chain: its name, the digest of its rules and
// how many there are.
type chainSum struct {
	name  string
	sum   uint64
	rules int
}

// spWritten is one service port as it was rendered.
type spWritten struct {
	sp     *model.ServicePort
	chains []chainSum // its own nat chains
	// parts are its rules in the shared chains, by part.
	parts     [numParts]string
	partRules [numParts]int
	// outside is its ClusterIP when that lies outside the ServiceCIDRs,
	// and so has a refusal of its own at the end of filter's
	// PROXYD-SERVICES.
	outside netip.Addr
}

// planOptions are what plan needs besides the State.
type planOptions struct {
	// sorted returns the State's service ports in key order; it is called
	// only when a shared chain is written or everything is.
	sorted func() []*model.ServicePort
	// stale are the PROXYD-* chains the kernel holds; a full write deletes
	// those it does not write.
	stale staleChains
	// jumps are the jump rules a full write inserts at the top of their
	// built-in chains (those the kernel lacks).
	jumps []jumpRule
	// alwaysServices rewrites both PROXYD-SERVICES chains every time, as
	// kube-proxy does; only the measurements use it.
	alwaysServices bool
}

// plan renders into t what turns the chains w describes into the chains s
// needs, and returns the description of the result. A nil w trusts
// nothing: every chain is written and the stale ones deleted (a full
// write). Otherwise w is updated in place (if the write then fails the
// caller must drop it): only service ports whose pointer changed are
// rendered (States are immutable, so the same pointer renders the same
// text; a new node renders them all), and a chain is written only when
// its text differs from what w says it holds.
func (r *renderer) plan(t *restoreText, s *model.State, w *written, o planOptions) *written {
	full := w == nil
	if full {
		w = &written{sps: make(map[model.ServicePortKey]*spWritten, len(s.Services))}
	}
	renderAll := full || !sameNode(w.node, s.Node)
	w.node = s.Node

	var base text
	r.baseChains(&base)
	for i, sp := range base.spans {
		b := base.bytes(sp)
		if sum := digest(b); full || w.base[i].sum != sum {
			t.chain(baseTables[i], sp.chain, b, false)
			w.base[i] = chainSum{name: sp.chain, sum: sum, rules: sp.rules}
		}
	}

	cidrs := familyCIDRs(s.ServiceCIDRs, r.fam)
	cidrsChanged := !slices.Equal(cidrs, w.cidrs)
	w.cidrs = cidrs

	var dirty [numParts]bool
	if full {
		dirty = [numParts]bool{true, true, true, true}
	}
	if o.alwaysServices {
		dirty[partNATServices], dirty[partFilterServices] = true, true
	}
	var changed []*model.ServicePort
	if full {
		changed = o.sorted()
	} else {
		for k, sp := range s.Services {
			if old := w.sps[k]; old == nil || old.sp != sp || renderAll {
				changed = append(changed, sp)
			} else if cidrsChanged {
				old.outside, _ = r.outsideVIP(sp, cidrs)
			}
		}
		slices.SortFunc(changed, func(a, b *model.ServicePort) int { return a.Key.Compare(b.Key) })
	}
	for _, sp := range changed {
		if _, ok := programmable(sp, r.fam); ok {
			r.writePort(t, sp, w, cidrs, &dirty)
		}
	}
	var removed []model.ServicePortKey
	for k := range w.sps {
		if sp, ok := s.Services[k]; !ok {
			removed = append(removed, k)
		} else if _, ok := programmable(sp, r.fam); !ok {
			removed = append(removed, k)
		}
	}
	slices.SortFunc(removed, model.ServicePortKey.Compare)
	for _, k := range removed {
		old := w.sps[k]
		delete(w.sps, k)
		for p, text := range old.parts {
			dirty[p] = dirty[p] || text != ""
		}
		for _, c := range old.chains {
			t.deleteChain(tableNAT, c.name)
		}
	}

	r.writeShared(t, w, o.sorted, &dirty)
	if full {
		r.deleteStale(t, w, o.stale)
		for _, j := range o.jumps {
			t.insertFirst(j.table, j.chain, j.spec)
		}
	}
	w.count()
	return w
}

// writePort renders sp, writes those of its own chains whose text
// differs from what w holds, deletes those it no longer has, marks the
// shared chains whose part changed, and records the result in w.
func (r *renderer) writePort(t *restoreText, sp *model.ServicePort, w *written, cidrs []netip.Prefix, dirty *[numParts]bool) {
	old := w.sps[sp.Key]
	rt := &r.sp
	rt.reset()
	r.parts(rt, sp)
	r.servicePort(rt, sp)
	nw := &spWritten{sp: sp}
	nw.outside, _ = r.outsideVIP(sp, cidrs)
	for p := range numParts {
		s := rt.spans[p]
		b := rt.bytes(s)
		switch {
		case old == nil && len(b) == 0:
		case old != nil && old.parts[p] == string(b):
			nw.parts[p] = old.parts[p]
		default:
			nw.parts[p] = string(b)
			dirty[p] = true
		}
		nw.partRules[p] = s.rules
	}
	own := rt.spans[numParts:]
	var before map[string]uint64
	if old != nil {
		before = make(map[string]uint64, len(old.chains))
		for _, c := range old.chains {
			before[c.name] = c.sum
		}
	}
	nw.chains = make([]chainSum, 0, len(own))
	for _, s := range own {
		b := rt.bytes(s)
		sum := digest(b)
		if was, ok := before[s.chain]; !ok || was != sum {
			t.chain(tableNAT, s.chain, b, true)
		}
		delete(before, s.chain)
		nw.chains = append(nw.chains, chainSum{name: s.chain, sum: sum, rules: s.rules})
	}
	if old != nil {
		for _, c := range old.chains {
			if _, gone := before[c.name]; gone {
				t.deleteChain(tableNAT, c.name)
			}
		}
	}
	w.sps[sp.Key] = nw
}

// writeShared writes each shared chain whose text changed: marked dirty
// by a service port's part, or with a new head or tail.
func (r *renderer) writeShared(t *restoreText, w *written, sorted func() []*model.ServicePort, dirty *[numParts]bool) {
	var heads, tails text
	r.heads(&heads)
	r.tails(&tails, w.outsideVIPs(), w.cidrs)
	for p := range numParts {
		head, tail := string(heads.bytes(heads.spans[p])), string(tails.bytes(tails.spans[p]))
		if head != w.heads[p] || tail != w.tails[p] {
			dirty[p] = true
			w.heads[p], w.tails[p] = head, tail
		}
	}
	var all []*model.ServicePort
	for p := range numParts {
		if !dirty[p] {
			continue
		}
		if all == nil {
			all = sorted()
		}
		b := t.open(partChains[p].table, partChains[p].name)
		b.writeString(w.heads[p])
		for _, sp := range all {
			if sw := w.sps[sp.Key]; sw != nil {
				b.writeString(sw.parts[p])
			}
		}
		b.writeString(w.tails[p])
	}
}

// outsideVIPs are the ClusterIPs outside the ServiceCIDRs, sorted,
// distinct.
func (w *written) outsideVIPs() []netip.Addr {
	var out []netip.Addr
	for _, sw := range w.sps {
		if sw.outside.IsValid() {
			out = append(out, sw.outside)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// deleteStale deletes the chains of stale that w does not hold.
func (r *renderer) deleteStale(t *restoreText, w *written, stale staleChains) {
	if len(stale) == 0 {
		return
	}
	keep := map[string]map[string]bool{tableNAT: {}, tableFilter: {}}
	for i, c := range w.base {
		keep[baseTables[i]][c.name] = true
	}
	for _, c := range partChains {
		keep[c.table][c.name] = true
	}
	for _, sw := range w.sps {
		for _, c := range sw.chains {
			keep[tableNAT][c.name] = true
		}
	}
	for _, table := range []string{tableFilter, tableNAT} {
		for _, c := range slices.Sorted(maps.Keys(stale[table])) {
			if !keep[table][c] {
				t.deleteChain(table, c)
			}
		}
	}
}

// count sets w.rules and w.chains from what w holds.
func (w *written) count() {
	rules, chains := 0, len(w.base)+int(numParts)
	for _, c := range w.base {
		rules += c.rules
	}
	for p := range numParts {
		rules += strings.Count(w.heads[p], "\n") + strings.Count(w.tails[p], "\n")
	}
	for _, sw := range w.sps {
		chains += len(sw.chains)
		for _, c := range sw.chains {
			rules += c.rules
		}
		for _, n := range sw.partRules {
			rules += n
		}
	}
	w.rules, w.chains = rules, chains
}

// sameNode reports whether a and b render the same rules: the same name,
// zone and addresses.
func sameNode(a, b model.Node) bool {
	return a.Name == b.Name && a.Zone == b.Zone && slices.Equal(a.IPs, b.IPs)
}
