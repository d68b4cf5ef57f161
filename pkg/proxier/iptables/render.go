package iptables

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Render returns the iptables-restore text (for --noflush) that programs s
// in full for family fam: the nat and filter tables' PROXYD-* chains,
// ClusterIPs, NodePorts and external IPs. It is
// pure; the jump rules from the built-in chains are not part of it (the
// Proxier ensures them with single-rule commands, see jumpRules).
func Render(s *model.State, cfg proxier.Config, fam model.IPFamily) []byte {
	r := newRenderer(cfg, fam)
	r.forNode(s.Node)
	var t restoreText
	r.fullState(&t, s.Sorted(), s.ServiceCIDRs, nil)
	return t.bytes()
}

// renderer renders the rules of one family under one Config.
type renderer struct {
	fam        model.IPFamily
	masqAll    bool
	cidr       string // "! -s" source for the masquerade rule; "" for none
	hostSuffix string // "/32" or "/128"
	mark       string
	markMask   string // mark/mark
	drop       string // the drop mark
	dropMask   string // drop/drop
	rejectWith string
	loopback   string // the loopback range
	localhost  bool   // NodePorts are served on loopback too (IPv4 only)
	cfg        proxier.Config
	npAll      bool         // NodePorts answer on every local address
	npIPs      []netip.Addr // else on these (--nodeport-addresses)
	probs      []string     // probs[n] is probability(n), cached
}

func newRenderer(cfg proxier.Config, fam model.IPFamily) *renderer {
	r := &renderer{
		fam:        fam,
		masqAll:    cfg.MasqueradeAll,
		hostSuffix: "/32",
		mark:       markString(cfg.Mark()),
		rejectWith: "icmp-port-unreachable",
		loopback:   "127.0.0.0/8",
	}
	r.markMask = r.mark + "/" + r.mark
	r.drop = markString(dropMark(cfg.Mark()))
	r.dropMask = r.drop + "/" + r.drop
	r.cfg = cfg
	r.localhost = cfg.LocalhostNodePorts && fam == model.IPv4 && cfg.NodePortsOnLoopback(fam)
	r.forNode(model.Node{})
	if fam == model.IPv6 {
		r.hostSuffix = "/128"
		r.rejectWith = "icmp6-port-unreachable"
		r.loopback = "::1/128"
	}
	if p, ok := cfg.ClusterCIDR(int(fam)); ok {
		r.cidr = p.Masked().String()
	}
	return r
}

// baseRules is how many rules every sync keeps beside the service ports'.
func (r *renderer) baseRules() int {
	n := baseRules - 1 + r.nodePortJumps()
	if r.localhost {
		n++
	}
	if r.cfg.ConntrackTCPLiberal {
		n--
	}
	return n
}

// dropMark is kube-proxy's drop bit, 1<<15, or 1<<14 when the masquerade
// mark took bit 15.
func dropMark(masq uint32) uint32 {
	if masq == 1<<15 {
		return 1 << 14
	}
	return 1 << 15
}

func (r *renderer) prob(n int) string {
	for len(r.probs) <= n {
		r.probs = append(r.probs, probability(max(len(r.probs), 1)))
	}
	return r.probs[n]
}

// staleChains are PROXYD-* chains found in the kernel, per table, that a
// full write must delete unless it writes them again.
type staleChains map[string]map[string]bool

// base renders the chains every sync keeps: masquerade and drop marking,
// the postrouting masquerade and filter's PROXYD-FORWARD. PROXYD-SERVICES,
// PROXYD-NODEPORTS and
// PROXYD-EXTERNAL-SERVICES are always there too, written by services,
// nodePorts and externalServices.
func (r *renderer) base(t *restoreText) {
	t.natChain(ChainPostrouting)
	t.natChain(ChainMarkMasq)
	t.natChain(ChainMarkDrop)
	t.rule(&t.natRules, ChainPostrouting, "-m", "mark", "!", "--mark", r.markMask, "-j", "RETURN")
	// Clear the bit so a packet that passes another proxy layer (or is
	// re-routed) is not masqueraded twice.
	t.rule(&t.natRules, ChainPostrouting, "-j", "MARK", "--xor-mark", r.mark)
	t.rule(&t.natRules, ChainPostrouting, "-m", "comment", "--comment", `"proxyd service traffic requiring SNAT"`, "-j", "MASQUERADE", "--random-fully")
	t.rule(&t.natRules, ChainMarkMasq, "-j", "MARK", "--or-mark", r.mark)
	t.rule(&t.natRules, ChainMarkDrop, "-j", "MARK", "--or-mark", r.drop)

	t.filterChain(ChainForward)
	r.dropMarked(t, ChainForward)
	if !r.cfg.ConntrackTCPLiberal {
		t.rule(&t.filterRules, ChainForward, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	t.rule(&t.filterRules, ChainForward, "-m", "comment", "--comment", `"proxyd forwarding rules"`,
		"-m", "mark", "--mark", r.markMask, "-j", "ACCEPT")
	t.rule(&t.filterRules, ChainForward, "-m", "comment", "--comment", `"proxyd forwarding conntrack rule"`,
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
}

// dropMarked drops, in filter's chain, what a firewall chain marked.
func (r *renderer) dropMarked(t *restoreText, chain string) {
	t.rule(&t.filterRules, chain, "-m", "mark", "--mark", r.dropMask, "-m", "comment", "--comment",
		`"proxyd loadBalancerSourceRanges: a source not admitted"`, "-j", "DROP")
}

// services renders PROXYD-SERVICES of both tables in full, with the
// external IPs and the jump to PROXYD-NODEPORTS in nat, and returns how
// many refusal rules it wrote (see refuse).
func (r *renderer) services(t *restoreText, sps []*model.ServicePort, cidrs []netip.Prefix) int {
	t.natChain(ChainServices)
	t.filterChain(ChainServices)
	for _, sp := range sps {
		r.dispatchTo(t, sp, true, true)
	}
	r.nodePortsJump(t)
	return r.refuse(t, sps, cidrs)
}

// forNode sets the addresses NodePorts answer on from the node's.
func (r *renderer) forNode(n model.Node) {
	r.npIPs, r.npAll = r.cfg.NodePortIPs(n, r.fam)
}

// nodePortsJump is the end of nat's PROXYD-SERVICES: what is addressed to
// one of the node's own addresses (loopback only with localhost NodePorts;
// only those --nodeport-addresses allows) may be for a NodePort.
func (r *renderer) nodePortsJump(t *restoreText) {
	const comment = `"proxyd service nodeports; NOTE: this must be the last rule in this chain"`
	if r.npAll {
		var notLoopback []string
		if !r.localhost {
			notLoopback = []string{"!", "-d", r.loopback}
		}
		t.rule(&t.natRules, ChainServices, append(notLoopback, "-m", "comment", "--comment", comment,
			"-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainNodePorts)...)
		return
	}
	if r.localhost {
		t.rule(&t.natRules, ChainServices, "-d", r.loopback, "-m", "comment", "--comment", comment, "-j", ChainNodePorts)
	}
	for _, ip := range r.npIPs {
		t.rule(&t.natRules, ChainServices, "-d", ip.String()+r.hostSuffix, "-m", "comment", "--comment", comment, "-j", ChainNodePorts)
	}
}

// nodePortJumps is how many rules nodePortsJump writes.
func (r *renderer) nodePortJumps() int {
	switch {
	case r.npAll:
		return 1
	case r.localhost:
		return 1 + len(r.npIPs)
	}
	return len(r.npIPs)
}

// nodePorts renders nat's PROXYD-NODEPORTS in full.
func (r *renderer) nodePorts(t *restoreText, sps []*model.ServicePort) {
	t.natChain(ChainNodePorts)
	for _, sp := range sps {
		r.nodePortRule(t, sp)
	}
}

// externalServices renders filter's PROXYD-EXTERNAL-SERVICES in full; it
// starts with the drop of what a firewall chain marked.
func (r *renderer) externalServices(t *restoreText, sps []*model.ServicePort) {
	t.filterChain(ChainExternalServices)
	r.dropMarked(t, ChainExternalServices)
	if r.localhost {
		// route_localnet lets packets to 127.0.0.0/8 be routed; only the
		// node's own and DNATed ones may be, as kube-proxy guards it.
		t.rule(&t.filterRules, ChainExternalServices, "!", "-s", r.loopback, "-d", r.loopback, "-m", "comment", "--comment",
			`"block incoming localnet connections"`, "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
	}
	for _, sp := range sps {
		r.externalFilterRules(t, sp)
	}
}

// refuse renders the end of filter's PROXYD-SERVICES: a REJECT for every
// ServiceCIDR of the family and for every ClusterIP outside them. Filter
// runs after nat, so a packet still addressed to one of these was not
// DNATed: it is for a port no service port has, or for an address no
// Service has. With the ServiceCIDRs known that is one rule per range, not
// one per ClusterIP; it returns how many rules it wrote.
func (r *renderer) refuse(t *restoreText, sps []*model.ServicePort, cidrs []netip.Prefix) int {
	n := 0
	var last netip.Addr
	var outside []netip.Addr
	for _, sp := range sps {
		if vip, ok := programmable(sp, r.fam); ok && vip != last && !inAny(cidrs, vip) {
			outside = append(outside, vip)
			last = vip
		}
	}
	slices.SortFunc(outside, netip.Addr.Compare)
	outside = slices.Compact(outside)
	for _, vip := range outside {
		t.rule(&t.filterRules, ChainServices, "-d", vip.String()+r.hostSuffix, "-m", "comment", "--comment", `"a port this ClusterIP does not serve"`,
			"-j", "REJECT", "--reject-with", r.rejectWith)
		n++
	}
	for _, c := range cidrs {
		if model.FamilyOf(c.Addr()) == r.fam {
			t.rule(&t.filterRules, ChainServices, "-d", c.String(), "-m", "comment", "--comment", `"an unallocated ClusterIP or a port its Service does not have"`,
				"-j", "REJECT", "--reject-with", r.rejectWith)
			n++
		}
	}
	return n
}

// familyCIDRs returns the prefixes of cidrs of family fam.
func familyCIDRs(cidrs []netip.Prefix, fam model.IPFamily) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range cidrs {
		if model.FamilyOf(c.Addr()) == fam {
			out = append(out, c)
		}
	}
	return out
}

func inAny(cidrs []netip.Prefix, a netip.Addr) bool {
	for _, c := range cidrs {
		if c.Contains(a) {
			return true
		}
	}
	return false
}

// dispatchTo renders sp's rules in PROXYD-SERVICES: a jump to its chain
// in nat, or a REJECT in filter when it has no endpoint of this family,
// and in nat the jumps from its external IPs to its external chain; only
// into the tables asked for.
func (r *renderer) dispatchTo(t *restoreText, sp *model.ServicePort, nat, filter bool) {
	vip, ok := programmable(sp, r.fam)
	if !ok {
		return
	}
	withEndpoints := hasEndpoints(sp, r.fam)
	proto := sp.Key.Protocol.Lower()
	dst := vip.String() + r.hostSuffix
	port := strconv.Itoa(int(sp.Port))
	name := portName(sp.Key)
	switch {
	case withEndpoints && nat:
		t.rule(&t.natRules, ChainServices, "-d", dst, "-p", proto, "-m", "comment", "--comment", quoteComment(name+" cluster IP"),
			"-m", proto, "--dport", port, "-j", svcChain(sp.Key))
	case !withEndpoints && filter && sp.ClusterDrops(r.fam):
		// Other nodes serve it: drop, as kube-proxy does.
		t.rule(&t.filterRules, ChainServices, "-d", dst, "-p", proto, "-m", "comment", "--comment", quoteComment(name+" has no local endpoints"),
			"-m", proto, "--dport", port, "-j", "DROP")
	case !withEndpoints && filter:
		t.rule(&t.filterRules, ChainServices, "-d", dst, "-p", proto, "-m", "comment", "--comment", quoteComment(name+" has no endpoints"),
			"-m", proto, "--dport", port, "-j", "REJECT", "--reject-with", r.rejectWith)
	}
	if nat {
		r.externalIPRules(t, sp)
	}
}

// external is how sp takes external traffic in this family.
type external struct {
	ips []netip.Addr     // the external IPs of the family
	eps []model.Endpoint // the endpoints external traffic may use
	// chain: the port has an external chain (some endpoint serves it);
	// without one, its NodePort and external IPs are refused.
	chain bool
}

// externalOf returns how sp takes external traffic in this family; ok is
// false when it takes none (no NodePort, no external IP of the family).
func (r *renderer) externalOf(sp *model.ServicePort) (external, bool) {
	if _, ok := programmable(sp, r.fam); !ok {
		return external{}, false
	}
	if sp.NodePort == 0 && len(sp.ExternalIPs) == 0 {
		return external{}, false
	}
	var e external
	for _, ip := range sp.ExternalIPs {
		if model.FamilyOf(ip) == r.fam {
			e.ips = append(e.ips, ip)
		}
	}
	if sp.NodePort == 0 && len(e.ips) == 0 {
		return external{}, false
	}
	e.eps = endpointsOf(sp.ExternalEndpoints, r.fam)
	e.chain = len(e.eps) > 0 || hasEndpoints(sp, r.fam)
	return e, true
}

// externalIPRules renders the jumps of nat's PROXYD-SERVICES from sp's
// external IPs to its external chain, or to its firewall chain for the
// load-balancer IPs loadBalancerSourceRanges guard.
func (r *renderer) externalIPRules(t *restoreText, sp *model.ServicePort) {
	e, ok := r.externalOf(sp)
	if !ok || len(e.ips) == 0 {
		return
	}
	_, guarded := r.guard(sp)
	proto := sp.Key.Protocol.Lower()
	port := strconv.Itoa(int(sp.Port))
	for _, ip := range e.ips {
		comment, target := quoteComment(portName(sp.Key)+" external IP"), extChain(sp.Key)
		switch {
		case guarded[ip]:
			comment, target = quoteComment(portName(sp.Key)+" loadbalancer IP"), fwChain(sp.Key)
		case !e.chain:
			continue
		}
		t.rule(&t.natRules, ChainServices, "-d", ip.String()+r.hostSuffix, "-p", proto, "-m", "comment", "--comment", comment,
			"-m", proto, "--dport", port, "-j", target)
	}
}

// nodePortRule renders sp's jump in nat's PROXYD-NODEPORTS.
func (r *renderer) nodePortRule(t *restoreText, sp *model.ServicePort) {
	e, ok := r.externalOf(sp)
	if !ok || !e.chain || sp.NodePort == 0 {
		return
	}
	proto := sp.Key.Protocol.Lower()
	t.rule(&t.natRules, ChainNodePorts, "-p", proto, "-m", "comment", "--comment", quoteComment(portName(sp.Key)),
		"-m", proto, "--dport", strconv.Itoa(int(sp.NodePort)), "-j", extChain(sp.Key))
}

// externalFilterRules renders sp's rules in filter's
// PROXYD-EXTERNAL-SERVICES: a REJECT for its NodePort and external IPs
// when nothing serves it, a DROP when only external traffic is left
// without an endpoint (externalTrafficPolicy Local and no local one).
// Nat runs first, so a packet these rules see was not DNATed.
func (r *renderer) externalFilterRules(t *restoreText, sp *model.ServicePort) {
	e, ok := r.externalOf(sp)
	if !ok || e.chain && len(e.eps) > 0 {
		return
	}
	proto := sp.Key.Protocol.Lower()
	name := portName(sp.Key)
	comment, verdict := quoteComment(name+" has no endpoints"), []string{"REJECT", "--reject-with", r.rejectWith}
	if e.chain {
		comment, verdict = quoteComment(name+" has no local endpoints"), []string{"DROP"}
	}
	port := strconv.Itoa(int(sp.Port))
	for _, ip := range e.ips {
		t.rule(&t.filterRules, ChainExternalServices, append([]string{"-d", ip.String() + r.hostSuffix, "-p", proto,
			"-m", "comment", "--comment", comment, "-m", proto, "--dport", port, "-j"}, verdict...)...)
	}
	if sp.NodePort != 0 {
		t.rule(&t.filterRules, ChainExternalServices, append([]string{"-p", proto, "-m", "comment", "--comment", comment,
			"-m", "addrtype", "--dst-type", "LOCAL", "-m", proto, "--dport", strconv.Itoa(int(sp.NodePort)), "-j"}, verdict...)...)
	}
}

// servicePort renders sp's own nat chains: its service chain, the
// external chain and, when external traffic uses other endpoints than
// the service chain, their choice chain, and one chain per endpoint. It
// returns their names and how many rules they hold; none when sp has no
// ClusterIP or no endpoint of this family. Endpoint chains in unchanged
// are known to hold already what they would be written with, and are left
// alone.
func (r *renderer) servicePort(t *restoreText, sp *model.ServicePort, unchanged map[string]bool) ([]string, int) {
	vip, ok := programmable(sp, r.fam)
	if !ok {
		return nil, 0
	}
	eps := endpointsOf(sp.ClusterEndpoints, r.fam)
	ext, hasExt := r.externalOf(sp)
	hasExt = hasExt && ext.chain
	ranges, guarded := r.guard(sp)
	if len(eps) == 0 && !hasExt && len(guarded) == 0 {
		return nil, 0
	}
	before := t.rules
	proto := sp.Key.Protocol.Lower()
	name := portName(sp.Key)
	// Every endpoint either choice uses has its chain: the cluster
	// endpoints in order, then those only external traffic uses.
	all := eps
	if hasExt {
		for _, e := range ext.eps {
			if !slices.ContainsFunc(eps, func(o model.Endpoint) bool { return o.AddrPort() == e.AddrPort() }) {
				all = append(slices.Clip(all), e)
			}
		}
	}
	seps := make([]string, len(all)) // seps[i] is the chain of all[i]
	chains := make([]string, 0, 4+len(all))
	if len(guarded) > 0 {
		chains = append(chains, r.firewall(t, sp, ranges, hasExt))
	}
	svc := ""
	if len(eps) > 0 {
		svc = svcChain(sp.Key)
		chains = append(chains, svc)
		t.natChain(svc)
	}
	for i, e := range all {
		seps[i] = sepChain(sp.Key, e)
		if !unchanged[seps[i]] {
			t.natChain(seps[i])
		}
	}
	affinity := ""
	if sp.AffinitySeconds > 0 {
		affinity = strconv.Itoa(int(sp.AffinitySeconds))
	}
	if svc != "" {
		clusterIP := quoteComment(name + " cluster IP")
		dst := vip.String() + r.hostSuffix
		port := strconv.Itoa(int(sp.Port))
		switch {
		case r.masqAll:
			t.rule(&t.natRules, svc, "-d", dst, "-p", proto, "-m", "comment", "--comment", clusterIP,
				"-m", proto, "--dport", port, "-j", ChainMarkMasq)
		case r.cidr != "":
			t.rule(&t.natRules, svc, "!", "-s", r.cidr, "-d", dst, "-p", proto, "-m", "comment", "--comment", clusterIP,
				"-m", proto, "--dport", port, "-j", ChainMarkMasq)
		}
		r.choose(t, svc, name, eps, seps[:len(eps)], affinity)
	}
	if hasExt {
		xc := extChain(sp.Key)
		chains = append(chains, xc)
		t.natChain(xc)
		// External traffic goes to the service chain when it may use the
		// same endpoints, else to a choice of its own.
		target, svl := "", false
		switch {
		case len(ext.eps) == 0:
		case svc != "" && sameAddrPorts(ext.eps, eps):
			target = svc
		default:
			target, svl = svlChain(sp.Key), true
			chains = append(chains, target)
			t.natChain(target)
		}
		if !sp.ExternalLocal {
			// The reply must come back through this node.
			t.rule(&t.natRules, xc, "-m", "comment", "--comment", quoteComment("masquerade traffic for "+name+" external destinations"),
				"-j", ChainMarkMasq)
		} else if svc != "" {
			// Local policy keeps the client's address, so only this
			// node's endpoints serve; Pods and the node itself still get
			// the whole Service, as in kube-proxy.
			if r.cidr != "" {
				t.rule(&t.natRules, xc, "-s", r.cidr, "-m", "comment", "--comment", quoteComment("pod traffic for "+name+" external destinations"),
					"-j", svc)
			}
			t.rule(&t.natRules, xc, "-m", "comment", "--comment", quoteComment("masquerade LOCAL traffic for "+name+" external destinations"),
				"-m", "addrtype", "--src-type", "LOCAL", "-j", ChainMarkMasq)
			t.rule(&t.natRules, xc, "-m", "comment", "--comment", quoteComment("route LOCAL traffic for "+name+" external destinations"),
				"-m", "addrtype", "--src-type", "LOCAL", "-j", svc)
		}
		// Without a target the packet leaves unchanged, and filter's
		// PROXYD-EXTERNAL-SERVICES drops it.
		if target != "" {
			t.rule(&t.natRules, xc, "-j", target)
		}
		if svl {
			extSeps := make([]string, len(ext.eps))
			for i, e := range ext.eps {
				extSeps[i] = seps[slices.IndexFunc(all, func(o model.Endpoint) bool { return o.AddrPort() == e.AddrPort() })]
			}
			r.choose(t, target, name, ext.eps, extSeps, affinity)
		}
	}
	sepComment := quoteComment(name)
	reused := 0
	for i, e := range all {
		c := seps[i]
		chains = append(chains, c)
		if unchanged[c] {
			reused++
			continue
		}
		// Hairpin: an endpoint reaching itself through the VIP must see
		// the node as the source, or it would answer itself directly.
		t.rule(&t.natRules, c, "-s", e.IP.String()+r.hostSuffix, "-m", "comment", "--comment", sepComment, "-j", ChainMarkMasq)
		to := netip.AddrPortFrom(e.IP, e.Port).String()
		if affinity != "" {
			t.rule(&t.natRules, c, "-p", proto, "-m", "comment", "--comment", sepComment,
				"-m", "recent", "--name", c, "--set", "-j", "DNAT", "--to-destination", to)
		} else {
			t.rule(&t.natRules, c, "-p", proto, "-m", "comment", "--comment", sepComment, "-j", "DNAT", "--to-destination", to)
		}
	}
	return chains, t.rules - before + reused*sepRules
}

// choose renders into chain the random choice among eps, endpoint i by
// its chain seps[i]; with affinity (the timeout in seconds), a client
// seen recently goes back to the endpoint it used.
func (r *renderer) choose(t *restoreText, chain, name string, eps []model.Endpoint, seps []string, affinity string) {
	if affinity != "" {
		for i, e := range eps {
			sep := seps[i]
			t.rule(&t.natRules, chain, "-m", "comment", "--comment", quoteComment(name+" -> "+e.String()),
				"-m", "recent", "--name", sep, "--rcheck", "--seconds", affinity, "--reap", "-j", sep)
		}
	}
	// Endpoint i of n is taken with probability 1/(n-i) given that none
	// before it was, which makes every endpoint equally likely.
	for i, e := range eps {
		comment := quoteComment(name + " -> " + e.String())
		sep := seps[i]
		if i < len(eps)-1 {
			t.rule(&t.natRules, chain, "-m", "comment", "--comment", comment,
				"-m", "statistic", "--mode", "random", "--probability", r.prob(len(eps)-i), "-j", sep)
		} else {
			t.rule(&t.natRules, chain, "-m", "comment", "--comment", comment, "-j", sep)
		}
	}
}

// sameAddrPorts reports whether a and b are the same endpoints in the
// same order.
func sameAddrPorts(a, b []model.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y model.Endpoint) bool { return x.AddrPort() == y.AddrPort() })
}

// sepRules is how many rules an endpoint chain holds: the hairpin mark
// and the DNAT.
const sepRules = 2

// endpointsOf is model.EndpointsOf without the copy when every endpoint
// is of family fam, as it is unless a Service is dual-stack.
func endpointsOf(eps []model.Endpoint, fam model.IPFamily) []model.Endpoint {
	for _, e := range eps {
		if model.FamilyOf(e.IP) != fam {
			return model.EndpointsOf(eps, fam)
		}
	}
	return eps
}

// hasEndpoints reports whether sp has a usable endpoint of family fam.
func hasEndpoints(sp *model.ServicePort, fam model.IPFamily) bool {
	for _, e := range sp.ClusterEndpoints {
		if model.FamilyOf(e.IP) == fam {
			return true
		}
	}
	return false
}
