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

// The sets every table has; their elements come from the service ports.
func newSets() (serviceIPs, noEndpoints, clusterIPs, hairpin *Set) {
	tuple := []FieldType{FieldAddr, FieldProto, FieldPort}
	return &Set{Name: ServiceIPsMap, Fields: tuple, Verdicts: true},
		&Set{Name: NoEndpointsSet, Fields: tuple},
		&Set{Name: ClusterIPsSet, Fields: []FieldType{FieldAddr}},
		&Set{Name: HairpinSet, Fields: []FieldType{FieldAddr, FieldAddr}}
}

// serviceRules is everything one service port contributes to a family's
// table: its chain and its elements. The shared sets (cluster-ips,
// hairpin) may get the same element from several ports.
type serviceRules struct {
	chain      *Chain   // nil when the port has no usable endpoint
	dispatch   *Element // in service-ips, when chain is set
	noEndpoint *Element // in no-endpoint-services, when chain is nil
	clusterIP  netip.Addr
	hairpin    []netip.Addr
}

// renderServicePort renders one service port for family f; ok is false
// when the port has no ClusterIP of that family.
func renderServicePort(sp *model.ServicePort, cfg proxier.Config, f model.IPFamily) (serviceRules, bool) {
	vip, ok := sp.ClusterIP(f)
	if !ok {
		return serviceRules{}, false
	}
	out := serviceRules{clusterIP: vip}
	tuple := []Value{{Addr: vip}, {Proto: sp.Key.Protocol}, {Port: sp.Port}}
	eps := model.EndpointsOf(sp.ClusterEndpoints, f)
	if len(eps) == 0 {
		out.noEndpoint = &Element{Fields: tuple}
		return out, true
	}
	name := ServiceChain(sp.Key)
	out.dispatch = &Element{Fields: tuple, Goto: name}
	out.chain = &Chain{Name: name}
	if r := masqueradeRule(cfg, f, cfg.Mark()); r != nil {
		out.chain.Rules = append(out.chain.Rules, r)
	}
	for i, e := range eps {
		r := Rule{MatchL4Proto{Proto: sp.Key.Protocol}}
		if left := len(eps) - i; left > 1 {
			r = append(r, PickOneIn{N: left})
		}
		out.chain.Rules = append(out.chain.Rules, append(r, DNAT{Target: e.AddrPort()}))
		if !slices.Contains(out.hairpin, e.IP) {
			out.hairpin = append(out.hairpin, e.IP)
		}
	}
	return out, true
}

// renderBase renders the hooked chains, which depend only on the
// configuration and the service ranges.
func renderBase(s *model.State, cfg proxier.Config, f model.IPFamily) []*Chain {
	mark := cfg.Mark()
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
	return []*Chain{
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
	serviceIPs, noEndpoints, clusterIPs, hairpin := newSets()
	var serviceChains []*Chain
	for _, sp := range s.Sorted() {
		sr, ok := renderServicePort(sp, cfg, f)
		if !ok {
			continue
		}
		w.add(sp.Key, sr)
		if sr.chain == nil {
			noEndpoints.Elements = append(noEndpoints.Elements, *sr.noEndpoint)
			continue
		}
		serviceIPs.Elements = append(serviceIPs.Elements, *sr.dispatch)
		serviceChains = append(serviceChains, sr.chain)
	}
	for ip := range w.clusterIPs {
		clusterIPs.Elements = append(clusterIPs.Elements, Element{Fields: []Value{{Addr: ip}}})
	}
	for ip := range w.hairpin {
		hairpin.Elements = append(hairpin.Elements, Element{Fields: []Value{{Addr: ip}, {Addr: ip}}})
	}
	sets := []*Set{serviceIPs, noEndpoints, clusterIPs, hairpin}
	for _, set := range sets {
		slices.SortFunc(set.Elements, func(a, b Element) int { return compareElements(set.Fields, a, b) })
	}
	return &Ruleset{Family: f, Sets: sets, Chains: append(slices.Clone(w.base), serviceChains...)}, w
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
