package nftables

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Names of the objects every proxyd table has.
const (
	ServiceIPsMap       = "service-ips"
	NoEndpointsSet      = "no-endpoint-services"
	HairpinSet          = "hairpin"
	ClusterIPsSet       = "cluster-ips"
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

// Render builds the desired ruleset of one family. It is pure: the same
// State and Config always give the same Ruleset.
func Render(s *model.State, cfg proxier.Config, f model.IPFamily) *Ruleset {
	mark := cfg.Mark()
	serviceIPs := &Set{Name: ServiceIPsMap, Fields: []FieldType{FieldAddr, FieldProto, FieldPort}, Verdicts: true}
	noEndpoints := &Set{Name: NoEndpointsSet, Fields: []FieldType{FieldAddr, FieldProto, FieldPort}}
	hairpin := &Set{Name: HairpinSet, Fields: []FieldType{FieldAddr, FieldAddr}}
	hairpinAddrs := map[netip.Addr]bool{}
	clusterIPs := &Set{Name: ClusterIPsSet, Fields: []FieldType{FieldAddr}}
	for _, ip := range s.ClusterIPs(f) {
		clusterIPs.Elements = append(clusterIPs.Elements, Element{Fields: []Value{{Addr: ip}}})
	}

	var serviceChains []*Chain
	for _, sp := range s.Sorted() {
		vip, ok := sp.ClusterIP(f)
		if !ok {
			continue
		}
		tuple := []Value{{Addr: vip}, {Proto: sp.Key.Protocol}, {Port: sp.Port}}
		eps := model.EndpointsOf(sp.ClusterEndpoints, f)
		if len(eps) == 0 {
			noEndpoints.Elements = append(noEndpoints.Elements, Element{Fields: tuple})
			continue
		}
		name := ServiceChain(sp.Key)
		serviceIPs.Elements = append(serviceIPs.Elements, Element{Fields: tuple, Goto: name})
		targets := make([]netip.AddrPort, len(eps))
		for i, e := range eps {
			targets[i] = e.AddrPort()
			hairpinAddrs[e.IP] = true
		}
		chain := &Chain{Name: name}
		if r := masqueradeRule(cfg, f, mark); r != nil {
			chain.Rules = append(chain.Rules, r)
		}
		for i, t := range targets {
			r := Rule{MatchL4Proto{Proto: sp.Key.Protocol}}
			if left := len(targets) - i; left > 1 {
				r = append(r, PickOneIn{N: left})
			}
			chain.Rules = append(chain.Rules, append(r, DNAT{Target: t}))
		}
		serviceChains = append(serviceChains, chain)
	}
	for a := range hairpinAddrs {
		hairpin.Elements = append(hairpin.Elements, Element{Fields: []Value{{Addr: a}, {Addr: a}}})
	}
	for _, set := range []*Set{serviceIPs, noEndpoints, clusterIPs, hairpin} {
		slices.SortFunc(set.Elements, func(a, b Element) int { return compareElements(set.Fields, a, b) })
	}

	dispatch := Rule{MatchServiceTuple{Set: ServiceIPsMap, Vmap: true}}
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
	chains := []*Chain{
		{Name: chainNatPrerouting, Base: &BaseChain{Type: "nat", Hook: "prerouting", Priority: -100}, Rules: []Rule{dispatch}},
		{Name: chainNatOutput, Base: &BaseChain{Type: "nat", Hook: "output", Priority: -100}, Rules: []Rule{dispatch}},
		{Name: chainNatPostroute, Base: &BaseChain{Type: "nat", Hook: "postrouting", Priority: 100}, Rules: []Rule{
			{MatchCtStatusDNAT{}, MatchSourceDest{Set: HairpinSet}, Masquerade{}},
			{MatchMark{Mark: mark}, ClearMark{Mark: mark}, Masquerade{FullyRandom: true}},
		}},
		{Name: chainFilterForward, Base: &BaseChain{Type: "filter", Hook: "forward", Priority: -110}, Rules: append([]Rule{reject}, postDNAT...)},
		{Name: chainFilterOutput, Base: &BaseChain{Type: "filter", Hook: "output", Priority: -110}, Rules: []Rule{reject}},
		{Name: chainFilterPostDNAT, Base: &BaseChain{Type: "filter", Hook: "output", Priority: -90}, Rules: postDNAT},
	}
	return &Ruleset{
		Family: f,
		Sets:   []*Set{serviceIPs, noEndpoints, clusterIPs, hairpin},
		Chains: append(chains, serviceChains...),
	}
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
