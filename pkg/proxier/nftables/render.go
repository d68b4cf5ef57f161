package nftables

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
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
	pickChainPrefix     = "pick-"
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
	serviceIPs, noEndpoints, clusterIPs, hairpin, nodePorts, noEndpointNodePorts *nft.Set
	endpoints                                                                    map[model.Protocol]*nft.Set
}

// protocols are the protocols of the endpoint maps, in the order the table
// prints them.
var protocols = []model.Protocol{model.TCP, model.UDP, model.SCTP}

// EndpointsMap names the map that holds the endpoints of every ClusterIP
// service port of protocol p, by address, port and index
// ("endpoints-tcp").
func EndpointsMap(p model.Protocol) string { return "endpoints-" + p.Lower() }

// endpointsLabel is the modulus the endpoint maps' typeof names: a label
// only, each rule's numgen decides its numbers.
const endpointsLabel = 1 << 16

func newSets(f model.IPFamily) tableSets {
	addr := nft.AddrType(nftFamily(f))
	verdict := []nft.Type{nft.TypeVerdict}
	fam := nftFamily(f)
	eps := map[model.Protocol]*nft.Set{}
	for _, p := range protocols {
		eps[p] = &nft.Set{Name: EndpointsMap(p), Key: []nft.Type{addr, nft.TypeInetService, nft.TypeInteger},
			Data: []nft.Type{addr, nft.TypeInetService}, Typeof: &nft.Typeof{Mod: endpointsLabel, Family: fam, Proto: p.Number(), Dest: true}}
	}
	return tableSets{
		endpoints:           eps,
		serviceIPs:          &nft.Set{Name: ServiceIPsMap, Key: nft.KeyTypes(tuple(f)...), Data: verdict},
		noEndpoints:         &nft.Set{Name: NoEndpointsSet, Key: nft.KeyTypes(tuple(f)...)},
		clusterIPs:          &nft.Set{Name: ClusterIPsSet, Key: []nft.Type{addr}},
		hairpin:             &nft.Set{Name: HairpinSet, Key: []nft.Type{addr, addr}},
		nodePorts:           &nft.Set{Name: NodePortsMap, Key: nft.KeyTypes(protoPort...), Data: verdict},
		noEndpointNodePorts: &nft.Set{Name: NoEndpointNodePorts, Key: nft.KeyTypes(protoPort...)},
	}
}

// all lists the sets in the order the table prints them.
func (t tableSets) all() []*nft.Set {
	out := []*nft.Set{t.serviceIPs, t.nodePorts, t.noEndpoints, t.noEndpointNodePorts, t.clusterIPs, t.hairpin}
	for _, p := range protocols {
		out = append(out, t.endpoints[p])
	}
	return out
}

// serviceRules is everything one service port contributes to a family's
// table: its chains and its elements. The shared sets (cluster-ips,
// hairpin) may get the same element from several ports.
type serviceRules struct {
	chains             []*nft.Chain  // the service chain, then the external one
	dispatch           []nft.Element // in service-ips: the ClusterIP, external IPs
	nodePort           []nft.Element // in service-nodeports
	noEndpoint         []nft.Element // in no-endpoint-services
	noEndpointNodePort []nft.Element // in no-endpoint-nodeports
	clusterIP          netip.Addr
	hairpin            []netip.Addr
	sets               []*nft.Set    // session affinity: one dynamic set per endpoint
	maps               []*nft.Set    // endpoint maps the DNAT picks from
	endpoints          []nft.Element // in the protocol's endpoint map
	pick               pickKey       // the shared chain its ClusterIP goes to, if any
	fw                 *nft.Chain    // the firewall chain while it is being built
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
	elem := func(ip netip.Addr, v nft.Verdict) nft.Element {
		return nft.Element{Key: []nft.Value{nft.AddrValue(ip), nft.NumValue(uint32(proto.Number())), nft.NumValue(uint32(sp.Port))}, Verdict: v}
	}
	clusterEPs := model.EndpointsOf(sp.ClusterEndpoints, f)
	extEPs := model.EndpointsOf(sp.ExternalEndpoints, f)
	aff := out.affinity(sp, slices.Concat(clusterEPs, extEPs), f)
	svcChain := ""
	switch {
	case sp.ClusterDrops(f):
		// Other nodes serve it: drop, as kube-proxy does, so clients
		// retry rather than believe the Service is gone.
		c := &nft.Chain{Name: ServiceChain(sp.Key), Rules: []nft.Rule{{nft.Drop}}}
		out.chains = append(out.chains, c)
		out.dispatch = append(out.dispatch, elem(vip, nft.Goto(c.Name)))
	case len(clusterEPs) == 0:
		out.noEndpoint = append(out.noEndpoint, elem(vip, nft.Verdict{}))
	case aff == nil && !sp.HasExternal():
		out.pickFrom(sp, vip, clusterEPs)
		e := elem(vip, nft.Goto(out.pick.chain()))
		e.Comment = portName(sp.Key)
		out.dispatch = append(out.dispatch, e)
		out.addHairpin(clusterEPs)
	default:
		svcChain = ServiceChain(sp.Key)
		c := &nft.Chain{Name: svcChain}
		if r := masqueradeRule(cfg, f, cfg.Mark()); r != nil {
			c.Rules = append(c.Rules, r)
		}
		c.Rules = append(c.Rules, out.dnat(proto, clusterEPs, aff, f, EndpointMap(sp.Key))...)
		out.chains = append(out.chains, c)
		out.dispatch = append(out.dispatch, elem(vip, nft.Goto(svcChain)))
		out.addHairpin(clusterEPs)
	}
	if !sp.HasExternal() {
		return out, true
	}
	extIPs := addrsOf(sp.ExternalIPs, f)
	guarded := out.firewall(sp, f)
	npElem := nft.Element{Key: []nft.Value{nft.NumValue(uint32(proto.Number())), nft.NumValue(uint32(sp.NodePort))}}
	if len(extEPs) == 0 && svcChain == "" {
		// Nothing serves this port at all: refuse, as for the ClusterIP,
		// once the firewall has dropped the sources it does not admit.
		for _, ip := range extIPs {
			out.noEndpoint = append(out.noEndpoint, elem(ip, nft.Verdict{}))
			if guarded[ip] {
				out.dispatch = append(out.dispatch, elem(ip, nft.Goto(FirewallChain(sp.Key))))
			}
		}
		out.finishFirewall(nft.Accept)
		if sp.NodePort != 0 {
			out.noEndpointNodePort = append(out.noEndpointNodePort, npElem)
		}
		return out, true
	}
	ext := &nft.Chain{Name: ExternalChain(sp.Key)}
	setMark := nft.SetMark{Op: nft.MarkOr, Value: cfg.Mark()}
	if !sp.ExternalLocal {
		// The client's address cannot come back through another node.
		ext.Rules = append(ext.Rules, nft.Rule{setMark})
		ext.Rules = append(ext.Rules, out.dnat(proto, extEPs, aff, f, ExternalEndpointMap(sp.Key))...)
	} else {
		// Local policy keeps the client's address, so only this node's
		// endpoints serve; Pods and the node itself still get the whole
		// Service, as in kube-proxy.
		if cidr, ok := cfg.ClusterCIDR(int(f)); ok && svcChain != "" {
			ext.Rules = append(ext.Rules, nft.Rule{nft.AddrIn{Field: nft.Saddr(nftFamily(f)), Prefix: cidr}, nft.Goto(svcChain)})
		}
		if svcChain != "" {
			ext.Rules = append(ext.Rules, nft.Rule{nft.FibLocal{Source: true}, setMark, nft.Goto(svcChain)})
		}
		if len(extEPs) > 0 {
			ext.Rules = append(ext.Rules, out.dnat(proto, extEPs, aff, f, ExternalEndpointMap(sp.Key))...)
		} else {
			ext.Rules = append(ext.Rules, nft.Rule{nft.Drop})
		}
	}
	out.addHairpin(extEPs)
	out.chains = append(out.chains, ext)
	for _, ip := range extIPs {
		to := ext.Name
		if guarded[ip] {
			to = FirewallChain(sp.Key)
		}
		out.dispatch = append(out.dispatch, elem(ip, nft.Goto(to)))
	}
	out.finishFirewall(nft.Goto(ext.Name))
	if sp.NodePort != 0 {
		npElem.Verdict = nft.Goto(ext.Name)
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
	c := &nft.Chain{Name: FirewallChain(sp.Key)}
	for _, p := range ranges {
		c.Rules = append(c.Rules, nft.Rule{nft.AddrIn{Field: nft.Saddr(nftFamily(f)), Prefix: p}})
	}
	sr.fw = c
	return guarded
}

// finishFirewall ends every admitting rule with admit and drops the rest.
func (sr *serviceRules) finishFirewall(admit nft.Verdict) {
	if sr.fw == nil {
		return
	}
	for i := range sr.fw.Rules {
		sr.fw.Rules[i] = append(sr.fw.Rules[i], admit)
	}
	sr.fw.Rules = append(sr.fw.Rules, nft.Rule{nft.Drop})
	sr.chains = append(sr.chains, sr.fw)
	sr.fw = nil
}

// EndpointMap names the map the service chain of a port picks its
// endpoint from ("eps-default/web/tcp/http").
func EndpointMap(k model.ServicePortKey) string {
	return "eps-" + k.Namespace + "/" + k.Name + "/" + k.Protocol.Lower() + "/" + k.Port
}

// ExternalEndpointMap names the map of the external chain, when its
// endpoints are not the service chain's ("ext-eps-default/web/tcp/http").
func ExternalEndpointMap(k model.ServicePortKey) string { return "ext-" + EndpointMap(k) }

// endpointNumbers is the range of random numbers an endpoint map splits
// among the endpoints: uneven by at most one number in 65536.
const endpointNumbers = 1 << 16

// dnat picks one of eps uniformly for a new connection. Without session
// affinity that is one rule that looks a random number up in an endpoint
// map, the interval map name: only the map's elements change with the
// endpoints, which the kernel commits without validating any rule again
// (the map is the chain's of the same endpoints, when there is one). With
// affinity it is dnatRules.
func (sr *serviceRules) dnat(proto model.Protocol, eps []model.Endpoint, aff map[netip.AddrPort]string, f model.IPFamily, name string) []nft.Rule {
	if aff != nil {
		return dnatRules(proto, eps, aff, f)
	}
	fam := nftFamily(f)
	m := &nft.Set{Name: name, Key: []nft.Type{nft.TypeInteger}, Data: []nft.Type{nft.AddrType(fam), nft.TypeInetService},
		Interval: true, Typeof: &nft.Typeof{Mod: endpointNumbers, Family: fam, Proto: proto.Number()}}
	for i, e := range eps {
		lo, hi := uint32(i*endpointNumbers/len(eps)), uint32((i+1)*endpointNumbers/len(eps)-1)
		m.Elements = append(m.Elements, nft.Element{Key: []nft.Value{nft.NumRangeValue(lo, hi)},
			Data: []nft.Value{nft.AddrValue(e.IP), nft.NumValue(uint32(e.Port))}})
	}
	for _, have := range sr.maps {
		if slices.EqualFunc(have.Elements, m.Elements, func(a, b nft.Element) bool { return a.Text(have) == b.Text(m) }) {
			m = have
			break
		}
	}
	if !slices.Contains(sr.maps, m) {
		sr.maps = append(sr.maps, m)
	}
	return []nft.Rule{{nft.Proto{Proto: proto.Number()}, nft.DNATMap{Family: fam, Mod: endpointNumbers, Map: m.Name}}}
}

// pick sends a ClusterIP service port without session affinity or
// external traffic to the shared chain of its protocol and endpoint count
// (PickChain), and puts its endpoints, by index, in the protocol's
// endpoint map. Such a port has no chain or map of its own, so that adding
// one, removing one or changing its endpoints writes elements only (and,
// for an endpoint count no port had yet, one chain): the kernel commits
// that without validating the rules of every other port again. (A port
// with external traffic keeps a chain and an interval map of its own: its
// external chain's packets are not addressed to the ClusterIP.)
func (sr *serviceRules) pickFrom(sp *model.ServicePort, vip netip.Addr, eps []model.Endpoint) {
	for i, e := range eps {
		sr.endpoints = append(sr.endpoints, nft.Element{Key: []nft.Value{nft.AddrValue(vip), nft.NumValue(uint32(sp.Port)), nft.NumValue(uint32(i))},
			Data: []nft.Value{nft.AddrValue(e.IP), nft.NumValue(uint32(e.Port))}})
	}
	sr.pick = pickKey{proto: sp.Key.Protocol, n: len(eps)}
}

// pickKey identifies a pick chain: a protocol and an endpoint count (the
// zero value: none).
type pickKey struct {
	proto model.Protocol
	n     int
}

func (k pickKey) chain() string { return PickChain(k.proto, k.n) }

// PickChain names the chain shared by the ClusterIP service ports of
// protocol p with n endpoints ("pick-tcp-3").
func PickChain(p model.Protocol, n int) string {
	return fmt.Sprintf("%s%s-%d", pickChainPrefix, p.Lower(), n)
}

// renderPickChain is the chain PickChain names: the masquerade mark, then
// the DNAT to endpoint number (random mod n) of the destination's entry in
// the protocol's endpoint map.
func renderPickChain(k pickKey, cfg proxier.Config, f model.IPFamily) *nft.Chain {
	c := &nft.Chain{Name: k.chain()}
	if r := masqueradeRule(cfg, f, cfg.Mark()); r != nil {
		c.Rules = append(c.Rules, r)
	}
	c.Rules = append(c.Rules, nft.Rule{nft.DNATPick{Family: nftFamily(f), Proto: k.proto.Number(), Mod: uint32(k.n), Map: EndpointsMap(k.proto)}})
	return c
}

// portName is how a dispatch element's comment names its service port
// ("default/web/tcp/http"), for readers of the table such as explain.
func portName(k model.ServicePortKey) string {
	return k.Namespace + "/" + k.Name + "/" + k.Protocol.Lower() + "/" + k.Port
}

// dnatRules picks endpoint i of n with probability 1/(n-i). With session
// affinity (aff names each endpoint's set), a client seen recently goes
// back to its endpoint first, and every choice refreshes the client's entry.
func dnatRules(proto model.Protocol, eps []model.Endpoint, aff map[netip.AddrPort]string, f model.IPFamily) []nft.Rule {
	var out []nft.Rule
	l4 := nft.Proto{Proto: proto.Number()}
	src := []nft.Field{nft.Saddr(nftFamily(f))}
	if aff != nil {
		for _, e := range eps {
			set := aff[e.AddrPort()]
			out = append(out, nft.Rule{l4, nft.Lookup{Key: src, Set: set}, nft.Update{Key: src, Set: set}, nft.DNAT{To: e.AddrPort()}})
		}
	}
	for i, e := range eps {
		r := nft.Rule{l4}
		if left := len(eps) - i; left > 1 {
			r = append(r, nft.Numgen{Mod: uint32(left)})
		}
		if aff != nil {
			r = append(r, nft.Update{Key: src, Set: aff[e.AddrPort()]})
		}
		out = append(out, append(r, nft.DNAT{To: e.AddrPort()}))
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
func (sr *serviceRules) affinity(sp *model.ServicePort, eps []model.Endpoint, f model.IPFamily) map[netip.AddrPort]string {
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
		sr.sets = append(sr.sets, &nft.Set{Name: names[ap], Key: []nft.Type{nft.AddrType(nftFamily(f))},
			Dynamic: true, Timeout: time.Duration(sp.AffinitySeconds) * time.Second, Size: affinitySetSize})
	}
	slices.SortFunc(sr.sets, func(a, b *nft.Set) int { return cmp.Compare(a.Name, b.Name) })
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

// Priorities of the base chains: the filter chains run before the NAT
// chains (-110, as kube-proxy's "dstnat - 10"), except the one that must
// see a destination after DNAT (-90).
const (
	prioFilter      = -110
	prioAfterDNAT   = -90
	prioDNAT        = -100
	prioMasquerade  = 100
	affinitySetSize = 65535 // what nft gives a dynamic set it is not told
)

// renderBase renders the hooked chains, which depend only on the
// configuration and the service ranges.
func renderBase(s *model.State, cfg proxier.Config, f model.IPFamily) []*nft.Chain {
	fam := nftFamily(f)
	mark := cfg.Mark()
	dispatch := nft.Rule{nft.Vmap{Key: tuple(f), Map: ServiceIPsMap}}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	if f == model.IPv6 {
		loopback = netip.MustParsePrefix("::1/128")
	}
	newConn := nft.CtState{Bits: nft.CtNew}
	nodePortVmap := nft.Vmap{Key: protoPort, Map: NodePortsMap}
	noNodePort := nft.Lookup{Key: protoPort, Set: NoEndpointNodePorts}
	nodePorts := []nft.Rule{{nft.FibLocal{}, nft.AddrIn{Field: nft.Daddr(fam), Prefix: loopback, Not: true}, nodePortVmap}}
	rejectNodePorts := []nft.Rule{{newConn, nft.FibLocal{}, noNodePort, nft.Reject{}}}
	if ips, all := cfg.NodePortIPs(s.Node, f); !all {
		// --nodeport-addresses: only these of the node's addresses.
		nodePorts, rejectNodePorts = nil, nil
		for _, ip := range ips {
			to := nft.AddrIn{Field: nft.Daddr(fam), Prefix: netip.PrefixFrom(ip, ip.BitLen())}
			nodePorts = append(nodePorts, nft.Rule{to, nodePortVmap})
			rejectNodePorts = append(rejectNodePorts, nft.Rule{newConn, to, noNodePort, nft.Reject{}})
		}
	}
	reject := nft.Rule{newConn, nft.Lookup{Key: tuple(f), Set: NoEndpointsSet}, nft.Reject{}}
	// After DNAT, a packet still addressed to a ClusterIP, or to any
	// address of the service ranges, matched no service port: refuse it at
	// once rather than let the client time out.
	postDNAT := []nft.Rule{{newConn, nft.Lookup{Key: []nft.Field{nft.Daddr(fam)}, Set: ClusterIPsSet}, nft.Reject{}}}
	for _, cidr := range s.ServiceCIDRs {
		if model.FamilyOf(cidr.Addr()) == f {
			postDNAT = append(postDNAT, nft.Rule{newConn, nft.AddrIn{Field: nft.Daddr(fam), Prefix: cidr}, nft.Reject{}})
		}
	}
	base := func(name string, typ nft.ChainType, hook nft.Hook, prio int32, rules ...nft.Rule) *nft.Chain {
		return &nft.Chain{Name: name, Base: &nft.Base{Type: typ, Hook: hook, Priority: prio}, Rules: rules}
	}
	return []*nft.Chain{
		base(chainNatPrerouting, nft.NAT, nft.Prerouting, prioDNAT, append([]nft.Rule{dispatch}, nodePorts...)...),
		base(chainNatOutput, nft.NAT, nft.Output, prioDNAT, append([]nft.Rule{dispatch}, nodePorts...)...),
		base(chainNatPostroute, nft.NAT, nft.Postrouting, prioMasquerade,
			nft.Rule{nft.CtStatus{Bits: nft.CtDNAT}, nft.Lookup{Key: []nft.Field{nft.Saddr(fam), nft.Daddr(fam)}, Set: HairpinSet}, nft.Masquerade{}},
			nft.Rule{nft.Mark{Mask: mark, Value: mark}, nft.SetMark{Op: nft.MarkXor, Value: mark}, nft.Masquerade{FullyRandom: true}}),
		base(chainFilterForward, nft.Filter, nft.Forward, prioFilter, append([]nft.Rule{reject}, postDNAT...)...),
		base(chainFilterOutput, nft.Filter, nft.Output, prioFilter, reject),
		base(chainFilterPostDNAT, nft.Filter, nft.Output, prioAfterDNAT, postDNAT...),
		base(chainFilterInput, nft.Filter, nft.Input, prioFilter, rejectNodePorts...),
	}
}

// Render builds the desired table of one family. It is pure: the same
// State and Config always give the same table.
func Render(s *model.State, cfg proxier.Config, f model.IPFamily) *nft.Table {
	r, _ := renderAll(s, cfg, f)
	return r
}

// renderAll renders the whole table and returns, too, the per-port view
// the incremental path keeps.
func renderAll(s *model.State, cfg proxier.Config, f model.IPFamily) (*nft.Table, *written) {
	w := newWritten(renderBase(s, cfg, f), f)
	sets := newSets(f)
	var serviceChains []*nft.Chain
	var affinitySets, endpointMaps []*nft.Set
	for _, sp := range s.Sorted() {
		sr, ok := renderServicePort(sp, cfg, f)
		if !ok {
			continue
		}
		w.add(sp.Key, sr)
		affinitySets = append(affinitySets, sr.sets...)
		endpointMaps = append(endpointMaps, sr.maps...)
		sets.serviceIPs.Elements = append(sets.serviceIPs.Elements, sr.dispatch...)
		sets.nodePorts.Elements = append(sets.nodePorts.Elements, sr.nodePort...)
		sets.noEndpoints.Elements = append(sets.noEndpoints.Elements, sr.noEndpoint...)
		sets.noEndpointNodePorts.Elements = append(sets.noEndpointNodePorts.Elements, sr.noEndpointNodePort...)
		if len(sr.endpoints) > 0 {
			m := sets.endpoints[sp.Key.Protocol]
			m.Elements = append(m.Elements, sr.endpoints...)
		}
		serviceChains = append(serviceChains, sr.chains...)
	}
	for k := range w.picks {
		serviceChains = append(serviceChains, renderPickChain(k, cfg, f))
	}
	for ip := range w.clusterIPs {
		sets.clusterIPs.Elements = append(sets.clusterIPs.Elements, vipElement(ip))
	}
	for ip := range w.hairpin {
		sets.hairpin.Elements = append(sets.hairpin.Elements, hairpinElement(ip))
	}
	for _, set := range sets.all() {
		set.SortElements()
	}
	slices.SortFunc(serviceChains, func(a, b *nft.Chain) int { return cmp.Compare(a.Name, b.Name) })
	byName := func(a, b *nft.Set) int { return cmp.Compare(a.Name, b.Name) }
	slices.SortFunc(affinitySets, byName)
	slices.SortFunc(endpointMaps, byName)
	return &nft.Table{Family: nftFamily(f), Name: TableName, Sets: slices.Concat(sets.all(), endpointMaps, affinitySets),
		Chains: append(slices.Clone(w.base), serviceChains...)}, w
}

// masqueradeRule marks traffic that must leave with the node's address:
// everything with MasqueradeAll, else sources outside the cluster CIDR.
func masqueradeRule(cfg proxier.Config, f model.IPFamily, mark uint32) nft.Rule {
	set := nft.SetMark{Op: nft.MarkOr, Value: mark}
	if cfg.MasqueradeAll {
		return nft.Rule{set}
	}
	if cidr, ok := cfg.ClusterCIDR(int(f)); ok {
		return nft.Rule{nft.AddrIn{Field: nft.Saddr(nftFamily(f)), Prefix: cidr, Not: true}, set}
	}
	return nil
}
