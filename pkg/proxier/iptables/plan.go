package iptables

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
)

// written is what a family's tables hold after the last successful write,
// as far as proxyd's chains go. It is trusted only while no write failed.
type written struct {
	// base is how many rules the base chains hold (see baseRules), and
	// npAll and npIPs where they send NodePort traffic from.
	base  int
	npAll bool
	npIPs []netip.Addr
	// sps holds every service port with a ClusterIP of the family.
	sps map[model.ServicePortKey]writtenSP
	// spRules is the sum of the service ports' rules; the dispatch and
	// base rules come on top (see ruleCount).
	spRules  int
	spChains int
	// cidrs are the family's ServiceCIDRs, and refuseRules the REJECTs
	// at the end of filter's PROXYD-SERVICES they and the ClusterIPs
	// outside them took.
	cidrs       []netip.Prefix
	refuseRules int
	// extRules are the service ports' rules in the dispatch chains
	// beside their ClusterIP's: external IPs in nat's PROXYD-SERVICES,
	// PROXYD-NODEPORTS and filter's PROXYD-EXTERNAL-SERVICES.
	extRules int
}

// writtenSP is one service port as it was rendered.
type writtenSP struct {
	sp     *model.ServicePort
	chains []string // its nat chains: service, external and choice chains, then the endpoints'
	rules  int      // the rules in those chains
	// ext is what it contributes to the dispatch chains for external
	// traffic; nil when nothing.
	ext *extDispatch
}

// extDispatch is one service port's rules for external traffic in the
// dispatch chains, as rendered text, so that a change is detected
// exactly and rewrites only the chains it touches.
type extDispatch struct {
	natServices, nodePorts, filter string
	rules                          int
}

func (e *extDispatch) count() int {
	if e == nil {
		return 0
	}
	return e.rules
}

// extDispatchOf renders sp's external dispatch rules; nil when none.
func (r *renderer) extDispatchOf(sp *model.ServicePort) *extDispatch {
	if _, ok := r.externalOf(sp); !ok {
		return nil
	}
	var a, b, c restoreText
	r.externalIPRules(&a, sp)
	r.nodePortRule(&b, sp)
	r.externalFilterRules(&c, sp)
	return &extDispatch{
		natServices: string(a.natRules.appendTo(nil)),
		nodePorts:   string(b.natRules.appendTo(nil)),
		filter:      string(c.filterRules.appendTo(nil)),
		rules:       a.rules + b.rules + c.rules,
	}
}

func (e *extDispatch) parts() (natServices, nodePorts, filter string) {
	if e == nil {
		return "", "", ""
	}
	return e.natServices, e.nodePorts, e.filter
}

// baseRules and baseChains are what every family carries beside its
// service ports: PROXYD-POSTROUTING (3 rules), PROXYD-MARK-MASQ (1),
// PROXYD-MARK-DROP (1), PROXYD-SERVICES in nat (with the jump to
// PROXYD-NODEPORTS, 1) and filter, PROXYD-NODEPORTS,
// PROXYD-EXTERNAL-SERVICES (with the drop of marked packets, 1) and
// PROXYD-FORWARD (4, 3 when conntrack is liberal).
const (
	baseRules  = 11
	baseChains = 8
)

// ruleCount is the number of rules in proxyd's chains of the family: the
// base rules, one dispatch rule per service port (a jump in nat or a
// REJECT in filter), the refusals at the end of filter's
// PROXYD-SERVICES, the rules for external traffic in the dispatch chains
// and the service ports' own chains.
func (w *written) ruleCount() int {
	return w.base + len(w.sps) + w.spRules + w.refuseRules + w.extRules
}

// chainCount is the number of proxyd chains of the family.
func (w *written) chainCount() int { return baseChains + w.spChains }

// fullState renders every chain of the family for sps (sorted by key) and
// the ServiceCIDRs into t, deleting the chains of stale that it does not
// write again, and returns what the tables will hold.
func (r *renderer) fullState(t *restoreText, sps []*model.ServicePort, cidrs []netip.Prefix, stale staleChains) *written {
	w := &written{sps: make(map[model.ServicePortKey]writtenSP, len(sps)), cidrs: familyCIDRs(cidrs, r.fam), base: r.baseRules(),
		npAll: r.npAll, npIPs: r.npIPs}
	r.base(t)
	w.refuseRules = r.services(t, sps, w.cidrs)
	r.nodePorts(t, sps)
	r.externalServices(t, sps)
	for _, sp := range sps {
		if _, ok := programmable(sp, r.fam); !ok {
			continue
		}
		chains, rules := r.servicePort(t, sp, nil)
		w.add(sp, chains, rules, r.extDispatchOf(sp))
	}
	for _, c := range sortedKeys(stale[tableFilter]) {
		if c != ChainServices && c != ChainExternalServices && c != ChainForward {
			t.deleteChain(tableFilter, c)
		}
	}
	if len(stale[tableNAT]) > 0 {
		keep := map[string]bool{ChainServices: true, ChainPostrouting: true, ChainMarkMasq: true, ChainMarkDrop: true, ChainNodePorts: true}
		for _, wsp := range w.sps {
			for _, c := range wsp.chains {
				keep[c] = true
			}
		}
		for _, c := range sortedKeys(stale[tableNAT]) {
			if !keep[c] {
				t.deleteChain(tableNAT, c)
			}
		}
	}
	return w
}

func (w *written) add(sp *model.ServicePort, chains []string, rules int, ext *extDispatch) {
	w.sps[sp.Key] = writtenSP{sp: sp, chains: chains, rules: rules, ext: ext}
	w.spRules += rules
	w.spChains += len(chains)
	w.extRules += ext.count()
}

func (w *written) remove(k model.ServicePortKey) writtenSP {
	old := w.sps[k]
	delete(w.sps, k)
	w.spRules -= old.rules
	w.spChains -= len(old.chains)
	w.extRules -= old.ext.count()
	return old
}

// partial renders into t only what differs between w and s: the chains of
// the service ports whose rules changed (the chain line flushes a chain
// before its rules are appended again), -X for the chains no longer
// wanted, and PROXYD-SERVICES of a table only when its content changes.
// It updates w to describe the tables after the write; if the write fails
// the caller must drop w. sorted returns s's service ports sorted, and is
// called only when a PROXYD-SERVICES chain is rewritten.
func (r *renderer) partial(t *restoreText, s *model.State, w *written, sorted func() []*model.ServicePort, alwaysServices bool) {
	var changed []*model.ServicePort
	natDispatch, filterDispatch := alwaysServices, alwaysServices
	if r.npAll != w.npAll || !slices.Equal(r.npIPs, w.npIPs) {
		w.npAll, w.npIPs, w.base = r.npAll, r.npIPs, r.baseRules()
		natDispatch = true
	}
	if cidrs := familyCIDRs(s.ServiceCIDRs, r.fam); !slices.Equal(cidrs, w.cidrs) {
		w.cidrs = cidrs
		filterDispatch = true
	}
	// A ClusterIP outside the ServiceCIDRs has its own REJECT in filter.
	outside := func(sp *model.ServicePort) bool {
		vip, ok := programmable(sp, r.fam)
		return ok && !inAny(w.cidrs, vip)
	}
	for k, sp := range s.Services {
		if _, ok := programmable(sp, r.fam); !ok {
			continue
		}
		old, had := w.sps[k]
		if had && sameRules(old.sp, sp, r.fam) {
			if old.sp != sp {
				old.sp = sp
				w.sps[k] = old
			}
			continue
		}
		changed = append(changed, sp)
		if !had || !sameDispatch(old.sp, sp, r.fam) {
			if !had || hasEndpoints(old.sp, r.fam) || hasEndpoints(sp, r.fam) {
				natDispatch = true
			}
			if !had || !hasEndpoints(old.sp, r.fam) || !hasEndpoints(sp, r.fam) || outside(old.sp) || outside(sp) {
				filterDispatch = true
			}
		}
	}
	var removed []model.ServicePortKey
	for k := range w.sps {
		sp, ok := s.Services[k]
		if !ok {
			removed = append(removed, k)
		} else if _, ok := programmable(sp, r.fam); !ok {
			removed = append(removed, k)
		}
	}
	var nodePorts, filterExt bool
	// extChanged marks the dispatch chains whose external rules differ
	// between a and b.
	extChanged := func(a, b *extDispatch) {
		an, ap, af := a.parts()
		bn, bp, bf := b.parts()
		natDispatch = natDispatch || an != bn
		nodePorts = nodePorts || ap != bp
		filterExt = filterExt || af != bf
	}
	slices.SortFunc(removed, model.ServicePortKey.Compare)
	for _, k := range removed {
		old := w.remove(k)
		if hasEndpoints(old.sp, r.fam) {
			natDispatch = true
		}
		if !hasEndpoints(old.sp, r.fam) || outside(old.sp) {
			filterDispatch = true
		}
		extChanged(old.ext, nil)
		for _, c := range old.chains {
			t.deleteChain(tableNAT, c)
		}
	}

	slices.SortFunc(changed, func(a, b *model.ServicePort) int { return a.Key.Compare(b.Key) })
	for _, sp := range changed {
		old, had := w.sps[sp.Key]
		var unchanged map[string]bool
		if had {
			w.remove(sp.Key)
			// An endpoint chain's name hashes the service port and the
			// endpoint, so with the same affinity its rules are the same.
			if old.sp.AffinitySeconds == sp.AffinitySeconds && len(old.chains) > 1 {
				unchanged = make(map[string]bool, len(old.chains)-1)
				for _, c := range old.chains {
					if strings.HasPrefix(c, sepChainPrefix) {
						unchanged[c] = true
					}
				}
			}
		}
		ext := r.extDispatchOf(sp)
		extChanged(old.ext, ext)
		chains, rules := r.servicePort(t, sp, unchanged)
		w.add(sp, chains, rules, ext)
		for _, c := range old.chains {
			if !slices.Contains(chains, c) {
				t.deleteChain(tableNAT, c)
			}
		}
	}

	if natDispatch || filterDispatch || nodePorts || filterExt {
		all := sorted()
		if natDispatch {
			t.natChain(ChainServices)
		}
		if filterDispatch {
			t.filterChain(ChainServices)
		}
		if natDispatch || filterDispatch {
			for _, sp := range all {
				r.dispatchTo(t, sp, natDispatch, filterDispatch)
			}
		}
		if natDispatch {
			r.nodePortsJump(t)
		}
		if filterDispatch {
			w.refuseRules = r.refuse(t, all, w.cidrs)
		}
		if nodePorts {
			r.nodePorts(t, all)
		}
		if filterExt {
			r.externalServices(t, all)
		}
	}
}

// sameRules reports whether a and b render the same chains in family fam:
// only what reaches the rules counts, not the conditions of endpoints that
// were not selected.
func sameRules(a, b *model.ServicePort, fam model.IPFamily) bool {
	if a == b {
		return true
	}
	va, _ := a.ClusterIP(fam)
	vb, _ := b.ClusterIP(fam)
	if a.Key != b.Key || va != vb || a.Port != b.Port || a.AffinitySeconds != b.AffinitySeconds ||
		a.NodePort != b.NodePort || a.ExternalLocal != b.ExternalLocal || a.ClusterDrops(fam) != b.ClusterDrops(fam) {
		return false
	}
	return sameInFamily(a.ClusterEndpoints, b.ClusterEndpoints, fam, endpointIP, model.Endpoint.AddrPort) &&
		sameInFamily(a.ExternalEndpoints, b.ExternalEndpoints, fam, endpointIP, model.Endpoint.AddrPort) &&
		sameInFamily(a.ExternalIPs, b.ExternalIPs, fam, sameAddr, sameAddr) &&
		sameInFamily(a.LoadBalancerIPs, b.LoadBalancerIPs, fam, sameAddr, sameAddr) &&
		sameInFamily(a.SourceRanges, b.SourceRanges, fam, netip.Prefix.Addr, samePrefix)
}

func samePrefix(p netip.Prefix) netip.Prefix { return p }

// sameInFamily reports whether a and b hold, in order, the same elements
// of family fam: ip is an element's address, id what must be equal.
func sameInFamily[E any, K comparable](a, b []E, fam model.IPFamily, ip func(E) netip.Addr, id func(E) K) bool {
	i, j := 0, 0
	for {
		for i < len(a) && model.FamilyOf(ip(a[i])) != fam {
			i++
		}
		for j < len(b) && model.FamilyOf(ip(b[j])) != fam {
			j++
		}
		if i == len(a) || j == len(b) {
			return i == len(a) && j == len(b)
		}
		if id(a[i]) != id(b[j]) {
			return false
		}
		i++
		j++
	}
}

func endpointIP(e model.Endpoint) netip.Addr { return e.IP }

func sameAddr(ip netip.Addr) netip.Addr { return ip }

// sameDispatch reports whether a and b render the same PROXYD-SERVICES
// rules in family fam.
func sameDispatch(a, b *model.ServicePort, fam model.IPFamily) bool {
	va, _ := a.ClusterIP(fam)
	vb, _ := b.ClusterIP(fam)
	return va == vb && a.Port == b.Port && hasEndpoints(a, fam) == hasEndpoints(b, fam) && a.ClusterDrops(fam) == b.ClusterDrops(fam)
}

// programmable returns sp's ClusterIP of family fam, unless sp has none
// or could not be written at all (the model never builds such a port, but
// one bad port must not block every sync).
func programmable(sp *model.ServicePort, fam model.IPFamily) (netip.Addr, bool) {
	if !sp.Key.Protocol.Valid() || sp.Port == 0 {
		return netip.Addr{}, false
	}
	return sp.ClusterIP(fam)
}

func sortedKeys(m map[string]bool) []string {
	return slices.Sorted(maps.Keys(m))
}
