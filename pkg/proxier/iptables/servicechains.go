package iptables

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/proxyd/proxyd/pkg/model"
)

// servicePort renders sp's own nat chains, one span each: its firewall
// chain (loadBalancerSourceRanges), its service chain (the choice among
// ClusterEndpoints), its external chain (the externalTrafficPolicy
// decision), the choices external and short-circuited traffic make when
// they use other endpoints than the service chain, and a chain for each
// endpoint that may be the source of the connection it is chosen for
// (hairpin; see picker). It renders nothing when sp has no ClusterIP of
// the family, or nothing to serve and nothing to guard.
func (r *renderer) servicePort(t *text, sp *model.ServicePort) {
	vip, ok := programmable(sp, r.fam)
	if !ok {
		return
	}
	eps := endpointsOf(sp.ClusterEndpoints, r.fam)
	ext, hasExt := r.externalOf(sp)
	hasExt = hasExt && ext.chain
	ranges, guarded := r.guard(sp)
	if len(eps) == 0 && !hasExt && len(guarded) == 0 {
		return
	}
	var short []model.Endpoint
	if hasExt && sp.ShortCircuits(r.fam) {
		short = endpointsOf(model.SelectShortCircuitEndpoints(sp, r.node), r.fam)
	}
	proto := sp.Key.Protocol.Lower()
	name := portName(sp.Key)
	// Every endpoint any choice uses has its chain: the cluster endpoints
	// in order, then those only external or short-circuited traffic uses.
	all := eps
	for _, more := range [][]model.Endpoint{ext.eps, short} {
		for _, e := range more {
			if !slices.ContainsFunc(all, func(o model.Endpoint) bool { return o.AddrPort() == e.AddrPort() }) {
				all = append(slices.Clip(all), e)
			}
		}
	}
	pk := r.picker(sp)
	if len(guarded) > 0 {
		r.firewall(t, sp, ranges, hasExt)
	}
	svc := ""
	if len(eps) > 0 {
		svc = svcChain(sp.Key)
		t.begin(svc)
		clusterIP := quoteComment(name + " cluster IP")
		dst := vip.String() + r.hostSuffix
		port := strconv.Itoa(int(sp.Port))
		switch {
		case r.masqAll:
			t.rule("-d", dst, "-p", proto, "-m", "comment", "--comment", clusterIP,
				"-m", proto, "--dport", port, "-j", ChainMarkMasq)
		case r.cidr != "":
			t.rule("!", "-s", r.cidr, "-d", dst, "-p", proto, "-m", "comment", "--comment", clusterIP,
				"-m", proto, "--dport", port, "-j", ChainMarkMasq)
		}
		pk.choose(t, eps)
	}
	if hasExt {
		r.externalChains(t, sp, pk, ext.eps, short, svc, eps)
	}
	sepComment := quoteComment(name)
	for _, e := range all {
		if pk.direct(e) {
			continue
		}
		c := sepChain(sp.Key, e)
		t.begin(c)
		// Hairpin: an endpoint reaching itself through the VIP must see
		// the node as the source, or it would answer itself directly.
		t.rule("-s", e.IP.String()+r.hostSuffix, "-m", "comment", "--comment", sepComment, "-j", ChainMarkMasq)
		to := netip.AddrPortFrom(e.IP, e.Port).String()
		if pk.affinity != "" {
			t.rule("-p", proto, "-m", "comment", "--comment", sepComment,
				"-m", "recent", "--name", c, "--set", "-j", "DNAT", "--to-destination", to)
		} else {
			t.rule("-p", proto, "-m", "comment", "--comment", sepComment, "-j", "DNAT", "--to-destination", to)
		}
	}
}

// picker writes the rules that send a connection of one service port to
// one of its endpoints.
type picker struct {
	r        *renderer
	sp       *model.ServicePort
	proto    string
	name     string
	affinity string // sessionAffinity's timeout in seconds, "" for none
	shorts   bool   // the port short-circuits external traffic (see direct)
}

func (r *renderer) picker(sp *model.ServicePort) *picker {
	p := &picker{r: r, sp: sp, proto: sp.Key.Protocol.Lower(), name: portName(sp.Key), shorts: sp.ShortCircuits(r.fam)}
	if sp.AffinitySeconds > 0 {
		p.affinity = strconv.Itoa(int(sp.AffinitySeconds))
	}
	return p
}

// direct reports whether the choice rule DNATs to e itself, instead of
// jumping to a chain of e's that first masquerades e's own connections
// (hairpin). A connection from e reaches this node's nat rules only if e
// runs here — an endpoint's node DNATs its ClusterIP traffic before it
// leaves — or through an external destination whose traffic is not
// masqueraded anyway: the short circuit of externalTrafficPolicy Local,
// which takes Pods of every node. So an endpoint known to run on another
// node needs no chain unless the port short-circuits. kube-proxy gives
// every endpoint a chain; per-endpoint chains are what iptables-nft-restore
// spends its time on (measured on 1k Services × 10 remote endpoints:
// 5.5-6 s with them, 0.36-0.48 s without). Under session affinity every
// endpoint keeps its chain, as in kube-proxy: the chain sets the recent
// list named after it, which the choice rules check and `proxyd explain`
// follows back to the endpoint.
func (p *picker) direct(e model.Endpoint) bool {
	return p.affinity == "" && e.NodeName != "" && e.NodeName != p.r.node.Name && !p.shorts
}

// choose renders into the current chain the random choice among eps;
// with affinity, a client seen recently goes back to the endpoint it
// used. An endpoint is reached by a jump to its chain, or DNATed at once
// (see direct).
func (p *picker) choose(t *text, eps []model.Endpoint) {
	if p.affinity != "" {
		for _, e := range eps {
			sep := sepChain(p.sp.Key, e)
			t.rule("-m", "comment", "--comment", quoteComment(p.name+" -> "+e.String()),
				"-m", "recent", "--name", sep, "--rcheck", "--seconds", p.affinity, "--reap", "-j", sep)
		}
	}
	// Endpoint i of n is taken with probability 1/(n-i) given that none
	// before it was, which makes every endpoint equally likely.
	for i, e := range eps {
		sep := sepChain(p.sp.Key, e)
		words := []string{"-m", "comment", "--comment", quoteComment(p.name + " -> " + e.String())}
		if p.direct(e) {
			words = append([]string{"-p", p.proto}, words...)
		}
		if i < len(eps)-1 {
			words = append(words, "-m", "statistic", "--mode", "random", "--probability", p.r.prob(len(eps)-i))
		}
		if p.direct(e) {
			words = append(words, "-j", "DNAT", "--to-destination", e.String())
		} else {
			words = append(words, "-j", sep)
		}
		t.rule(words...)
	}
}

// externalChains renders sp's external chain and the choices it needs
// beside the service chain svc (which chooses among eps): one among
// extEPs for traffic from outside, and, under externalTrafficPolicy
// Local, one among short for the node's own and its Pods' traffic; a
// choice among the same endpoints as another is that other's chain.
func (r *renderer) externalChains(t *text, sp *model.ServicePort, pk *picker, extEPs, short []model.Endpoint, svc string, eps []model.Endpoint) {
	name := portName(sp.Key)
	type choice struct {
		chain string
		eps   []model.Endpoint
	}
	choices := []choice{{svc, eps}}
	// chainFor returns the chain choosing among want, creating newChain
	// for it when no choice so far has the same endpoints.
	chainFor := func(want []model.Endpoint, newChain string) string {
		if len(want) == 0 {
			return ""
		}
		for _, c := range choices {
			if c.chain != "" && sameAddrPorts(c.eps, want) {
				return c.chain
			}
		}
		choices = append(choices, choice{newChain, want})
		return newChain
	}
	target := chainFor(extEPs, svlChain(sp.Key))
	shortTarget := chainFor(short, svxChain(sp.Key))

	xc := extChain(sp.Key)
	t.begin(xc)
	if sp.MasqueradesExternal() {
		// The reply must come back through this node.
		t.rule("-m", "comment", "--comment", quoteComment("masquerade traffic for "+name+" external destinations"),
			"-j", ChainMarkMasq)
	} else if shortTarget != "" {
		// Local policy keeps the client's address, so only this node's
		// endpoints serve; Pods and the node itself still get the whole
		// Service, as in kube-proxy.
		if r.cidr != "" {
			t.rule("-s", r.cidr, "-m", "comment", "--comment", quoteComment("pod traffic for "+name+" external destinations"),
				"-j", shortTarget)
		}
		t.rule("-m", "comment", "--comment", quoteComment("masquerade LOCAL traffic for "+name+" external destinations"),
			"-m", "addrtype", "--src-type", "LOCAL", "-j", ChainMarkMasq)
		t.rule("-m", "comment", "--comment", quoteComment("route LOCAL traffic for "+name+" external destinations"),
			"-m", "addrtype", "--src-type", "LOCAL", "-j", shortTarget)
	}
	// Without a target the packet leaves unchanged, and filter's
	// PROXYD-EXTERNAL-SERVICES drops it.
	if target != "" {
		t.rule("-j", target)
	}
	for _, c := range choices[1:] {
		t.begin(c.chain)
		pk.choose(t, c.eps)
	}
}

// sameAddrPorts reports whether a and b are the same endpoints in the
// same order.
func sameAddrPorts(a, b []model.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y model.Endpoint) bool { return x.AddrPort() == y.AddrPort() })
}

// guard returns sp's loadBalancerSourceRanges of the family and the
// load-balancer IPs they guard; none when either is empty. NodePorts,
// external IPs and the ClusterIP are not guarded, as in kube-proxy.
func (r *renderer) guard(sp *model.ServicePort) ([]netip.Prefix, map[netip.Addr]bool) {
	ranges := familyCIDRs(sp.SourceRanges, r.fam)
	if len(ranges) == 0 {
		return nil, nil
	}
	var guarded map[netip.Addr]bool
	for _, ip := range sp.LoadBalancerIPs {
		if model.FamilyOf(ip) == r.fam {
			if guarded == nil {
				guarded = map[netip.Addr]bool{}
			}
			guarded[ip] = true
		}
	}
	return ranges, guarded
}

// firewall renders sp's firewall chain: each admitted range goes on to the
// external chain (or, with nothing to serve it, back to be refused), every
// other source is marked for filter to drop.
func (r *renderer) firewall(t *text, sp *model.ServicePort, ranges []netip.Prefix, hasExt bool) {
	t.begin(fwChain(sp.Key))
	admit := "RETURN"
	if hasExt {
		admit = extChain(sp.Key)
	}
	comment := quoteComment(portName(sp.Key) + " loadbalancer IP")
	for _, p := range ranges {
		t.rule("-s", p.String(), "-m", "comment", "--comment", comment, "-j", admit)
	}
	t.rule("-m", "comment", "--comment", comment, "-j", ChainMarkDrop)
}
