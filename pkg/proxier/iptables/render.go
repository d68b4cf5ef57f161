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
// pure; the jump rules from the built-in chains are not part of it (a
// full write of the Proxier inserts the missing ones, see jumpRules).
func Render(s *model.State, cfg proxier.Config, fam model.IPFamily) []byte {
	return RenderCounting(s, cfg, fam, Counters{})
}

// RenderCounting is Render with the rules that bump the nfacct counters c
// names (see Counters).
func RenderCounting(s *model.State, cfg proxier.Config, fam model.IPFamily, c Counters) []byte {
	r := newRenderer(cfg, fam)
	r.counters = c
	r.forNode(s.Node)
	return r.render(s)
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
	counters   Counters
	cfg        proxier.Config
	node       model.Node
	npAll      bool         // NodePorts answer on every local address
	npIPs      []netip.Addr // else on these (--nodeport-addresses)
	probs      []string     // probs[n] is probability(n), cached
	// sp is the scratch a service port is rendered into.
	sp text
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

// forNode sets the node the rules are for: the addresses NodePorts answer
// on, and the node whose topology short-circuited traffic follows.
func (r *renderer) forNode(n model.Node) {
	r.node = n
	r.npIPs, r.npAll = r.cfg.NodePortIPs(n, r.fam)
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

// baseChains renders the chains whose rules depend only on the Config:
// masquerade and drop marking, the postrouting masquerade and filter's
// PROXYD-FORWARD, one span each.
func (r *renderer) baseChains(t *text) {
	t.begin(ChainPostrouting)
	t.rule("-m", "mark", "!", "--mark", r.markMask, "-j", "RETURN")
	// Clear the bit so a packet that passes another proxy layer (or is
	// re-routed) is not masqueraded twice.
	t.rule("-j", "MARK", "--xor-mark", r.mark)
	t.rule("-m", "comment", "--comment", `"proxyd service traffic requiring SNAT"`, "-j", "MASQUERADE", "--random-fully")
	t.begin(ChainMarkMasq)
	t.rule("-j", "MARK", "--or-mark", r.mark)
	t.begin(ChainMarkDrop)
	t.rule("-j", "MARK", "--or-mark", r.drop)

	t.begin(ChainForward)
	r.dropMarked(t)
	if !r.cfg.ConntrackTCPLiberal {
		if r.counters.InvalidDropped {
			t.rule("-m", "conntrack", "--ctstate", "INVALID", "-m", "nfacct", "--nfacct-name", CounterInvalidDropped, "-j", "DROP")
		} else {
			t.rule("-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
		}
	}
	t.rule("-m", "comment", "--comment", `"proxyd forwarding rules"`,
		"-m", "mark", "--mark", r.markMask, "-j", "ACCEPT")
	t.rule("-m", "comment", "--comment", `"proxyd forwarding conntrack rule"`,
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
}

// baseTables is the table of each span baseChains writes.
var baseTables = [...]string{tableNAT, tableNAT, tableNAT, tableFilter}

// dropMarked drops, in the current filter chain, what a firewall chain
// marked.
func (r *renderer) dropMarked(t *text) {
	t.rule("-m", "mark", "--mark", r.dropMask, "-m", "comment", "--comment",
		`"proxyd loadBalancerSourceRanges: a source not admitted"`, "-j", "DROP")
}

// part is one of the shared chains every service port adds its rules to.
type part uint8

const (
	// partNATServices is nat's PROXYD-SERVICES: the ClusterIP's jump to
	// the service chain and the external IPs' jumps.
	partNATServices part = iota
	// partFilterServices is filter's PROXYD-SERVICES: the ClusterIP's
	// REJECT or DROP when it has no endpoint.
	partFilterServices
	// partNodePorts is nat's PROXYD-NODEPORTS: the NodePort's jump.
	partNodePorts
	// partExternal is filter's PROXYD-EXTERNAL-SERVICES: the REJECT or
	// DROP of external traffic without an endpoint.
	partExternal
	numParts
)

// partChains are the shared chains, by part.
var partChains = [numParts]struct{ table, name string }{
	partNATServices:    {tableNAT, ChainServices},
	partFilterServices: {tableFilter, ChainServices},
	partNodePorts:      {tableNAT, ChainNodePorts},
	partExternal:       {tableFilter, ChainExternalServices},
}

// parts renders sp's rules in the shared chains, one span per part in
// part order (empty spans included).
func (r *renderer) parts(t *text, sp *model.ServicePort) {
	t.begin(ChainServices)
	r.clusterIPJump(t, sp)
	r.externalIPRules(t, sp)
	t.begin(ChainServices)
	r.clusterIPRefusal(t, sp)
	t.begin(ChainNodePorts)
	r.nodePortRule(t, sp)
	t.begin(ChainExternalServices)
	r.externalFilterRules(t, sp)
}

// heads renders what the shared chains hold before the service ports'
// rules, one span per part: filter's PROXYD-EXTERNAL-SERVICES starts with
// the drop of what a firewall chain marked and, with localhost NodePorts,
// the guard of loopback.
func (r *renderer) heads(t *text) {
	t.begin(ChainServices)
	t.begin(ChainServices)
	t.begin(ChainNodePorts)
	t.begin(ChainExternalServices)
	r.dropMarked(t)
	if r.localhost {
		// route_localnet lets packets to 127.0.0.0/8 be routed; only the
		// node's own and DNATed ones may be, as kube-proxy guards it.
		t.rule("!", "-s", r.loopback, "-d", r.loopback, "-m", "comment", "--comment",
			`"block incoming localnet connections"`, "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
	}
}

// tails renders what the shared chains hold after the service ports'
// rules, one span per part: nat's PROXYD-SERVICES ends with the jump to
// PROXYD-NODEPORTS, filter's with the refusals (see refuse).
func (r *renderer) tails(t *text, outside []netip.Addr, cidrs []netip.Prefix) {
	t.begin(ChainServices)
	r.nodePortsJump(t)
	t.begin(ChainServices)
	r.refuse(t, outside, cidrs)
	t.begin(ChainNodePorts)
	t.begin(ChainExternalServices)
}

// nodePortsJump is the end of nat's PROXYD-SERVICES: what is addressed to
// one of the node's own addresses (loopback only with localhost NodePorts;
// only those --nodeport-addresses allows) may be for a NodePort.
func (r *renderer) nodePortsJump(t *text) {
	const comment = `"proxyd service nodeports; NOTE: this must be the last rule in this chain"`
	if r.npAll {
		var notLoopback []string
		if !r.localhost {
			notLoopback = []string{"!", "-d", r.loopback}
		}
		t.rule(append(notLoopback, "-m", "comment", "--comment", comment,
			"-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainNodePorts)...)
		return
	}
	if r.localhost {
		t.rule("-d", r.loopback, "-m", "comment", "--comment", comment, "-j", ChainNodePorts)
	}
	for _, ip := range r.npIPs {
		t.rule("-d", ip.String()+r.hostSuffix, "-m", "comment", "--comment", comment, "-j", ChainNodePorts)
	}
}

// refuse renders the end of filter's PROXYD-SERVICES: a REJECT for every
// ClusterIP outside the ServiceCIDRs (sorted, distinct) and for every
// ServiceCIDR of the family. Filter runs after nat, so a packet still
// addressed to one of these was not DNATed: it is for a port no service
// port has, or for an address no Service has. With the ServiceCIDRs known
// that is one rule per range, not one per ClusterIP.
func (r *renderer) refuse(t *text, outside []netip.Addr, cidrs []netip.Prefix) {
	for _, vip := range outside {
		t.rule("-d", vip.String()+r.hostSuffix, "-m", "comment", "--comment", `"a port this ClusterIP does not serve"`,
			"-j", "REJECT", "--reject-with", r.rejectWith)
	}
	for _, c := range cidrs {
		t.rule("-d", c.String(), "-m", "comment", "--comment", `"an unallocated ClusterIP or a port its Service does not have"`,
			"-j", "REJECT", "--reject-with", r.rejectWith)
	}
}

// outsideVIP returns sp's ClusterIP of the family when it lies outside
// cidrs (so that it needs a refusal of its own).
func (r *renderer) outsideVIP(sp *model.ServicePort, cidrs []netip.Prefix) (netip.Addr, bool) {
	vip, ok := programmable(sp, r.fam)
	if !ok || inAny(cidrs, vip) {
		return netip.Addr{}, false
	}
	return vip, true
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

// clusterIPJump renders the jump of nat's PROXYD-SERVICES from sp's
// ClusterIP to its service chain, when it has endpoints of the family.
func (r *renderer) clusterIPJump(t *text, sp *model.ServicePort) {
	vip, ok := programmable(sp, r.fam)
	if !ok || !hasEndpoints(sp, r.fam) {
		return
	}
	proto := sp.Key.Protocol.Lower()
	t.rule("-d", vip.String()+r.hostSuffix, "-p", proto, "-m", "comment", "--comment", quoteComment(portName(sp.Key)+" cluster IP"),
		"-m", proto, "--dport", strconv.Itoa(int(sp.Port)), "-j", svcChain(sp.Key))
}

// clusterIPRefusal renders filter's PROXYD-SERVICES rule for sp's
// ClusterIP without endpoints of the family: the model's decision, a
// DROP when other nodes serve it under internalTrafficPolicy Local, else
// a REJECT.
func (r *renderer) clusterIPRefusal(t *text, sp *model.ServicePort) {
	vip, ok := programmable(sp, r.fam)
	if !ok || hasEndpoints(sp, r.fam) {
		return
	}
	proto := sp.Key.Protocol.Lower()
	name := portName(sp.Key)
	dst, port := vip.String()+r.hostSuffix, strconv.Itoa(int(sp.Port))
	if sp.ClusterDrops(r.fam) {
		t.rule("-d", dst, "-p", proto, "-m", "comment", "--comment", quoteComment(name+" has no local endpoints"),
			"-m", proto, "--dport", port, "-j", "DROP")
		return
	}
	t.rule("-d", dst, "-p", proto, "-m", "comment", "--comment", quoteComment(name+" has no endpoints"),
		"-m", proto, "--dport", port, "-j", "REJECT", "--reject-with", r.rejectWith)
}

// external is how sp takes external traffic in this family.
type external struct {
	ips []netip.Addr     // the external IPs of the family
	eps []model.Endpoint // the endpoints traffic from outside may use
	// chain: the port has an external chain, because some node serves
	// it (model.ServicePort.Serves); without one, its NodePort and
	// external IPs are refused.
	chain bool
}

// externalOf returns how sp takes external traffic in this family; ok is
// false when it takes none (no NodePort, no external IP of the family).
func (r *renderer) externalOf(sp *model.ServicePort) (external, bool) {
	if _, ok := programmable(sp, r.fam); !ok || !sp.HasExternal() {
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
	e.chain = !sp.ExternalRefuses(r.fam)
	return e, true
}

// externalIPRules renders the jumps of nat's PROXYD-SERVICES from sp's
// external IPs to its external chain, or to its firewall chain for the
// load-balancer IPs loadBalancerSourceRanges guard.
func (r *renderer) externalIPRules(t *text, sp *model.ServicePort) {
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
		t.rule("-d", ip.String()+r.hostSuffix, "-p", proto, "-m", "comment", "--comment", comment,
			"-m", proto, "--dport", port, "-j", target)
	}
}

// nodePortRule renders sp's jump in nat's PROXYD-NODEPORTS.
func (r *renderer) nodePortRule(t *text, sp *model.ServicePort) {
	e, ok := r.externalOf(sp)
	if !ok || !e.chain || sp.NodePort == 0 {
		return
	}
	proto := sp.Key.Protocol.Lower()
	comment := quoteComment(portName(sp.Key))
	port := strconv.Itoa(int(sp.NodePort))
	if r.localhost && r.counters.LocalhostNodePorts {
		// The same jump, first counted when it is for loopback.
		t.rule("-d", r.loopback, "-p", proto, "-m", "comment", "--comment", comment,
			"-m", proto, "--dport", port, "-m", "nfacct", "--nfacct-name", CounterLocalhostNodePorts, "-j", extChain(sp.Key))
	}
	t.rule("-p", proto, "-m", "comment", "--comment", comment, "-m", proto, "--dport", port, "-j", extChain(sp.Key))
}

// externalFilterRules renders sp's rules in filter's
// PROXYD-EXTERNAL-SERVICES, the model's decisions for external traffic
// without an endpoint: a REJECT for its NodePort and external IPs when no
// node serves it, a DROP when only this node has none for traffic from
// outside (externalTrafficPolicy Local). Nat runs first, so a packet these
// rules see was not DNATed (the short circuit of the node's own and its
// Pods' traffic was).
func (r *renderer) externalFilterRules(t *text, sp *model.ServicePort) {
	e, ok := r.externalOf(sp)
	if !ok {
		return
	}
	name := portName(sp.Key)
	var comment string
	var verdict []string
	switch {
	case sp.ExternalRefuses(r.fam):
		comment, verdict = quoteComment(name+" has no endpoints"), []string{"REJECT", "--reject-with", r.rejectWith}
	case sp.ExternalDrops(r.fam):
		comment, verdict = quoteComment(name+" has no local endpoints"), []string{"DROP"}
	default:
		return
	}
	proto := sp.Key.Protocol.Lower()
	port := strconv.Itoa(int(sp.Port))
	for _, ip := range e.ips {
		t.rule(append([]string{"-d", ip.String() + r.hostSuffix, "-p", proto,
			"-m", "comment", "--comment", comment, "-m", proto, "--dport", port, "-j"}, verdict...)...)
	}
	if sp.NodePort != 0 {
		t.rule(append([]string{"-p", proto, "-m", "comment", "--comment", comment,
			"-m", "addrtype", "--dst-type", "LOCAL", "-m", proto, "--dport", strconv.Itoa(int(sp.NodePort)), "-j"}, verdict...)...)
	}
}

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
	return slices.ContainsFunc(sp.ClusterEndpoints, func(e model.Endpoint) bool { return model.FamilyOf(e.IP) == fam })
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
