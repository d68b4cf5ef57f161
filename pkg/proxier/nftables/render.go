package nftables

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Names of the objects every proxyd table has.
const (
	ServiceIPsMap       = "service-ips"
	NoEndpointsSet      = "no-endpoint-services"
	HairpinSet          = "hairpin"
	ClusterIPsSet       = "cluster-ips"
	NodePortsMap        = "service-nodeports"
	NoEndpointNodePorts = "no-endpoint-nodeports"
	chainFilterInput    = "filter-input"
	externalChainPrefix = "ext-"
	firewallChainPrefix = "fw-"
	chainFilterPostDNAT = "filter-output-post-dnat"
	chainNatPrerouting  = "nat-prerouting"
	chainNatOutput      = "nat-output"
	chainNatPostroute   = "nat-postrouting"
	chainFilterForward  = "filter-forward"
	chainFilterOutput   = "filter-output"
	serviceChainPrefix  = "svc-"
)

// ServiceChain names the chain of one service port: readable, unique and
// stable across restarts ("svc-default/web/tcp/http").
func ServiceChain(k model.ServicePortKey) string {
	return serviceChainPrefix + k.Namespace + "/" + k.Name + "/" + k.Protocol.Lower() + "/" + k.Port
}

// ExternalChain names the chain NodePort and external-IP traffic of one
// service port takes ("ext-default/web/tcp/http").
func ExternalChain(k model.ServicePortKey) string {
	return externalChainPrefix + k.Namespace + "/" + k.Name + "/" + k.Protocol.Lower() + "/" + k.Port
}

// FirewallChain names the chain that admits only loadBalancerSourceRanges
// to the load-balancer IPs of one service port ("fw-default/web/tcp/http").
func FirewallChain(k model.ServicePortKey) string {
	return firewallChainPrefix + k.Namespace + "/" + k.Name + "/" + k.Protocol.Lower() + "/" + k.Port
}

// tableSets are the sets every table has; their elements come from the
// service ports.
type tableSets struct {
	serviceIPs, noEndpoints, clusterIPs, hairpin, nodePorts, noEndpointNodePorts *Set
}

func newSets() tableSets {
	tuple := []FieldType{FieldAddr, FieldProto, FieldPort}
	protoPort := []FieldType{FieldProto, FieldPort}
	return tableSets{
		serviceIPs:          &Set{Name: ServiceIPsMap, Fields: tuple, Verdicts: true},
		noEndpoints:         &Set{Name: NoEndpointsSet, Fields: tuple},
		clusterIPs:          &Set{Name: ClusterIPsSet, Fields: []FieldType{FieldAddr}},
		hairpin:             &Set{Name: HairpinSet, Fields: []FieldType{FieldAddr, FieldAddr}},
		nodePorts:           &Set{Name: NodePortsMap, Fields: protoPort, Verdicts: true},
		noEndpointNodePorts: &Set{Name: NoEndpointNodePorts, Fields: protoPort},
	}
}

// all lists the sets in the order the table prints them.
func (t tableSets) all() []*Set {
	return []*Set{t.serviceIPs, t.nodePorts, t.noEndpoints, t.noEndpointNodePorts, t.clusterIPs, t.hairpin}
}

// serviceRules is everything one service port contributes to a family's
// table: its chains and its elements. The shared sets (cluster-ips,
// hairpin) may get the same element from several ports.
type serviceRules struct {
	chains             []*Chain  // the service chain, then the external one
	dispatch           []Element // in service-ips: the ClusterIP, external IPs
	nodePort           []Element // in service-nodeports
	noEndpoint         []Element // in no-endpoint-services
	noEndpointNodePort []Element // in no-endpoint-nodeports
	clusterIP          netip.Addr
	hairpin            []netip.Addr
	sets               []*Set // session affinity: one dynamic set per endpoint
	fw                 *Chain // the firewall chain while it is being built
}

// renderServicePort renders one service port for family f; ok is false
// when the port has no ClusterIP of that family.
func renderServicePort(sp *model.ServicePort, cfg proxier.Config, f model.IPFamily) (serviceRules, bool) {
	vip, ok := sp.ClusterIP(f)
	if !ok {
		return serviceRules{}, false
	}
	out := serviceRules{clusterIP: vip}
	proto := sp.Key.Protocol
	tuple := func(ip netip.Addr) Element {
		return Element{Fields: []Value{{Addr: ip}, {Proto: proto}, {Port: sp.Port}}}
	}
	clusterEPs := model.EndpointsOf(sp.ClusterEndpoints, f)
	extEPs := model.EndpointsOf(sp.ExternalEndpoints, f)
	aff := out.affinity(sp, slices.Concat(clusterEPs, extEPs))
	svcChain := ""
	switch {
	case sp.ClusterDrops(f):
		// Other nodes serve it: drop, as kube-proxy does, so clients
		// retry rather than believe the Service is gone.
		c := &Chain{Name: ServiceChain(sp.Key), Rules: []Rule{{Drop{}}}}
		out.chains = append(out.chains, c)
		e := tuple(vip)
		e.Goto = c.Name
		out.dispatch = append(out.dispatch, e)
	case len(clusterEPs) == 0:
		out.noEndpoint = append(out.noEndpoint, tuple(vip))
	default:
		svcChain = ServiceChain(sp.Key)
		c := &Chain{Name: svcChain}
		if r := masqueradeRule(cfg, f, cfg.Mark()); r != nil {
			c.Rules = append(c.Rules, r)
		}
		c.Rules = append(c.Rules, dnatRules(proto, clusterEPs, aff)...)
		out.chains = append(out.chains, c)
		e := tuple(vip)
		e.Goto = svcChain
		out.dispatch = append(out.dispatch, e)
		out.addHairpin(clusterEPs)
	}
	if !sp.HasExternal() {
		return out, true
	}
	extIPs := addrsOf(sp.ExternalIPs, f)
	guarded := out.firewall(sp, f)
	npElem := Element{Fields: []Value{{Proto: proto}, {Port: sp.NodePort}}}
	if len(extEPs) == 0 && svcChain == "" {
		// Nothing serves this port at all: refuse, as for the ClusterIP,
		// once the firewall has dropped the sources it does not admit.
		for _, ip := range extIPs {
			out.noEndpoint = append(out.noEndpoint, tuple(ip))
			if guarded[ip] {
				e := tuple(ip)
				e.Goto = FirewallChain(sp.Key)
				out.dispatch = append(out.dispatch, e)
			}
		}
		out.finishFirewall(Accept{})
		if sp.NodePort != 0 {
			out.noEndpointNodePort = append(out.noEndpointNodePort, npElem)
		}
		return out, true
	}
	ext := &Chain{Name: ExternalChain(sp.Key)}
	mark := cfg.Mark()
	if !sp.ExternalLocal {
		// The client's address cannot come back through another node.
		ext.Rules = append(ext.Rules, Rule{SetMark{Mark: mark}})
		ext.Rules = append(ext.Rules, dnatRules(proto, extEPs, aff)...)
	} else {
		// Local policy keeps the client's address, so only this node's
		// endpoints serve; Pods and the node itself still get the whole
		// Service, as in kube-proxy.
		if cidr, ok := cfg.ClusterCIDR(int(f)); ok && svcChain != "" {
			ext.Rules = append(ext.Rules, Rule{MatchSourceIn{Prefix: cidr}, Goto{Chain: svcChain}})
		}
		if svcChain != "" {
			ext.Rules = append(ext.Rules, Rule{MatchFibLocal{Source: true}, SetMark{Mark: mark}, Goto{Chain: svcChain}})
		}
		if len(extEPs) > 0 {
			ext.Rules = append(ext.Rules, dnatRules(proto, extEPs, aff)...)
		} else {
			ext.Rules = append(ext.Rules, Rule{Drop{}})
		}
	}
	out.addHairpin(extEPs)
	out.chains = append(out.chains, ext)
	for _, ip := range extIPs {
		e := tuple(ip)
		e.Goto = ext.Name
		if guarded[ip] {
			e.Goto = FirewallChain(sp.Key)
		}
		out.dispatch = append(out.dispatch, e)
	}
	out.finishFirewall(Goto{Chain: ext.Name})
	if sp.NodePort != 0 {
		npElem.Goto = ext.Name
		out.nodePort = append(out.nodePort, npElem)
	}
	return out, true
}

// firewall returns the load-balancer IPs of family f that
// loadBalancerSourceRanges guard, and starts their chain: one rule per
// admitted range, which finishFirewall completes. kube-proxy guards the
// same addresses; NodePorts, external IPs and the ClusterIP stay open.
func (sr *serviceRules) firewall(sp *model.ServicePort, f model.IPFamily) map[netip.Addr]bool {
	var ranges []netip.Prefix
	for _, p := range sp.SourceRanges {
		if model.FamilyOf(p.Addr()) == f {
			ranges = append(ranges, p)
		}
	}
	lbIPs := addrsOf(sp.LoadBalancerIPs, f)
	if len(ranges) == 0 || len(lbIPs) == 0 {
		return nil
	}
	guarded := map[netip.Addr]bool{}
	for _, ip := range lbIPs {
		guarded[ip] = true
	}
	c := &Chain{Name: FirewallChain(sp.Key)}
	for _, p := range ranges {
		c.Rules = append(c.Rules, Rule{MatchSourceIn{Prefix: p}})
	}
	sr.fw = c
	return guarded
}

// finishFirewall ends every admitting rule with admit and drops the rest.
func (sr *serviceRules) finishFirewall(admit Stmt) {
	if sr.fw == nil {
		return
	}
	for i := range sr.fw.Rules {
		sr.fw.Rules[i] = append(sr.fw.Rules[i], admit)
	}
	sr.fw.Rules = append(sr.fw.Rules, Rule{Drop{}})
	sr.chains = append(sr.chains, sr.fw)
	sr.fw = nil
}

// dnatRules picks endpoint i of n with probability 1/(n-i). With session
// affinity (aff names each endpoint's set), a client seen recently goes
// back to its endpoint first, and every choice refreshes the client's entry.
func dnatRules(proto model.Protocol, eps []model.Endpoint, aff map[netip.AddrPort]string) []Rule {
	var out []Rule
	if aff != nil {
		for _, e := range eps {
			set := aff[e.AddrPort()]
			out = append(out, Rule{MatchL4Proto{Proto: proto}, MatchSourceInSet{Set: set}, UpdateSource{Set: set}, DNAT{Target: e.AddrPort()}})
		}
	}
	for i, e := range eps {
		r := Rule{MatchL4Proto{Proto: proto}}
		if left := len(eps) - i; left > 1 {
			r = append(r, PickOneIn{N: left})
		}
		if aff != nil {
			r = append(r, UpdateSource{Set: aff[e.AddrPort()]})
		}
		out = append(out, append(r, DNAT{Target: e.AddrPort()}))
	}
	return out
}

// AffinitySet names the session-affinity set of one endpoint of one
// service port ("aff-default/web/tcp/http__10.244.1.11/8080").
func AffinitySet(k model.ServicePortKey, e netip.AddrPort) string {
	ip := strings.ReplaceAll(e.Addr().String(), ":", ".")
	return fmt.Sprintf("aff-%s/%s/%s/%s__%s/%d", k.Namespace, k.Name, k.Protocol.Lower(), k.Port, ip, e.Port())
}

// affinity creates the dynamic sets of sp's endpoints when the Service has
// ClientIP session affinity, and returns their names by endpoint.
func (sr *serviceRules) affinity(sp *model.ServicePort, eps []model.Endpoint) map[netip.AddrPort]string {
	if sp.AffinitySeconds <= 0 || len(eps) == 0 {
		return nil
	}
	names := map[netip.AddrPort]string{}
	for _, e := range eps {
		ap := e.AddrPort()
		if _, ok := names[ap]; ok {
			continue
		}
		names[ap] = AffinitySet(sp.Key, ap)
		sr.sets = append(sr.sets, &Set{Name: names[ap], Fields: []FieldType{FieldAddr}, Timeout: time.Duration(sp.AffinitySeconds) * time.Second})
	}
	slices.SortFunc(sr.sets, func(a, b *Set) int { return cmp.Compare(a.Name, b.Name) })
	return names
}

func (sr *serviceRules) addHairpin(eps []model.Endpoint) {
	for _, e := range eps {
		if !slices.Contains(sr.hairpin, e.IP) {
			sr.hairpin = append(sr.hairpin, e.IP)
		}
	}
}

func addrsOf(ips []netip.Addr, f model.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if model.FamilyOf(ip) == f {
			out = append(out, ip)
		}
	}
	return out
}

// renderBase renders the hooked chains, which depend only on the
// configuration and the service ranges.
func renderBase(s *model.State, cfg proxier.Config, f model.IPFamily) []*Chain {
	mark := cfg.Mark()
	dispatch := Rule{MatchServiceTuple{Set: ServiceIPsMap, Vmap: true}}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	if f == model.IPv6 {
		loopback = netip.MustParsePrefix("::1/128")
	}
	nodePorts := []Rule{{MatchFibLocal{}, MatchDestIn{Prefix: loopback, Not: true}, MatchProtoPort{Set: NodePortsMap, Vmap: true}}}
	rejectNodePorts := []Rule{{MatchCtStateNew{}, MatchFibLocal{}, MatchProtoPort{Set: NoEndpointNodePorts}, Reject{}}}
	if ips, all := cfg.NodePortIPs(s.Node, f); !all {
		// --nodeport-addresses: only these of the node's addresses.
		nodePorts, rejectNodePorts = nil, nil
		for _, ip := range ips {
			to := MatchDestIn{Prefix: netip.PrefixFrom(ip, ip.BitLen())}
			nodePorts = append(nodePorts, Rule{to, MatchProtoPort{Set: NodePortsMap, Vmap: true}})
			rejectNodePorts = append(rejectNodePorts, Rule{MatchCtStateNew{}, to, MatchProtoPort{Set: NoEndpointNodePorts}, Reject{}})
		}
	}
	reject := Rule{MatchCtStateNew{}, MatchServiceTuple{Set: NoEndpointsSet}, Reject{}}
	// After DNAT, a packet still addressed to a ClusterIP, or to any
	// address of the service ranges, matched no service port: refuse it at
	// once rather than let the client time out.
	postDNAT := []Rule{{MatchCtStateNew{}, MatchDestIn{Set: ClusterIPsSet}, Reject{}}}
	for _, cidr := range s.ServiceCIDRs {
		if model.FamilyOf(cidr.Addr()) == f {
			postDNAT = append(postDNAT, Rule{MatchCtStateNew{}, MatchDestIn{Prefix: cidr}, Reject{}})
		}
	}
	return []*Chain{
		{Name: chainNatPrerouting, Base: &BaseChain{Type: "nat", Hook: "prerouting", Priority: -100}, Rules: append([]Rule{dispatch}, nodePorts...)},
		{Name: chainNatOutput, Base: &BaseChain{Type: "nat", Hook: "output", Priority: -100}, Rules: append([]Rule{dispatch}, nodePorts...)},
		{Name: chainNatPostroute, Base: &BaseChain{Type: "nat", Hook: "postrouting", Priority: 100}, Rules: []Rule{
			{MatchCtStatusDNAT{}, MatchSourceDest{Set: HairpinSet}, Masquerade{}},
			{MatchMark{Mark: mark}, ClearMark{Mark: mark}, Masquerade{FullyRandom: true}},
		}},
		{Name: chainFilterForward, Base: &BaseChain{Type: "filter", Hook: "forward", Priority: -110}, Rules: append([]Rule{reject}, postDNAT...)},
		{Name: chainFilterOutput, Base: &BaseChain{Type: "filter", Hook: "output", Priority: -110}, Rules: []Rule{reject}},
		{Name: chainFilterPostDNAT, Base: &BaseChain{Type: "filter", Hook: "output", Priority: -90}, Rules: postDNAT},
		{Name: chainFilterInput, Base: &BaseChain{Type: "filter", Hook: "input", Priority: -110}, Rules: rejectNodePorts},
	}
}

// Render builds the desired ruleset of one family. It is pure: the same
// State and Config always give the same Ruleset.
func Render(s *model.State, cfg proxier.Config, f model.IPFamily) *Ruleset {
	r, _ := renderAll(s, cfg, f)
	return r
}

// renderAll renders the whole table and returns, too, the per-port view
// the incremental path keeps.
func renderAll(s *model.State, cfg proxier.Config, f model.IPFamily) (*Ruleset, *written) {
	w := newWritten(renderBase(s, cfg, f))
	sets := newSets()
	var serviceChains []*Chain
	var affinitySets []*Set
	for _, sp := range s.Sorted() {
		sr, ok := renderServicePort(sp, cfg, f)
		if !ok {
			continue
		}
		w.add(sp.Key, sr)
		affinitySets = append(affinitySets, sr.sets...)
		sets.serviceIPs.Elements = append(sets.serviceIPs.Elements, sr.dispatch...)
		sets.nodePorts.Elements = append(sets.nodePorts.Elements, sr.nodePort...)
		sets.noEndpoints.Elements = append(sets.noEndpoints.Elements, sr.noEndpoint...)
		sets.noEndpointNodePorts.Elements = append(sets.noEndpointNodePorts.Elements, sr.noEndpointNodePort...)
		serviceChains = append(serviceChains, sr.chains...)
	}
	for ip := range w.clusterIPs {
		sets.clusterIPs.Elements = append(sets.clusterIPs.Elements, vipElement(ip))
	}
	for ip := range w.hairpin {
		sets.hairpin.Elements = append(sets.hairpin.Elements, hairpinElement(ip))
	}
	for _, set := range sets.all() {
		slices.SortFunc(set.Elements, func(a, b Element) int { return compareElements(set.Fields, a, b) })
	}
	slices.SortFunc(serviceChains, func(a, b *Chain) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(affinitySets, func(a, b *Set) int { return cmp.Compare(a.Name, b.Name) })
	return &Ruleset{Family: f, Sets: append(sets.all(), affinitySets...), Chains: append(slices.Clone(w.base), serviceChains...)}, w
}

// masqueradeRule marks traffic that must leave with the node's address:
// everything with MasqueradeAll, else sources outside the cluster CIDR.
func masqueradeRule(cfg proxier.Config, f model.IPFamily, mark uint32) Rule {
	if cfg.MasqueradeAll {
		return Rule{SetMark{Mark: mark}}
	}
	if cidr, ok := cfg.ClusterCIDR(int(f)); ok {
		return Rule{MatchSourceNotIn{Prefix: cidr}, SetMark{Mark: mark}}
	}
	return nil
}

func compareElements(types []FieldType, a, b Element) int {
	for i, t := range types {
		var c int
		switch t {
		case FieldAddr:
			c = a.Fields[i].Addr.Compare(b.Fields[i].Addr)
		case FieldProto:
			c = cmp.Compare(a.Fields[i].Proto, b.Fields[i].Proto)
		default:
			c = cmp.Compare(a.Fields[i].Port, b.Fields[i].Port)
		}
		if c != 0 {
			return c
		}
	}
	return 0
}
