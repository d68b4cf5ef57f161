package ipvs

import (
	"net/netip"
	"slices"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
)

// This file is the one place the proxyd-ipvs nftables table is described,
// in pkg/nft's rule language: pkg/nft compiles it for the kernel, prints it
// for golden tests and traces it.

// Where the base chains run. Marking runs in nat prerouting/output, before
// IPVS sees the packet (IPVS schedules new connections at LOCAL_IN priority
// 99 and LOCAL_OUT -98: NF_IP_PRI_NAT_SRC - 1 and NF_IP_PRI_NAT_DST + 2 in
// the kernel's ip_vs_core.c); masquerade in nat postrouting, after IPVS
// rewrote the destination. The reject chains run where IPVS has already
// taken what it serves: input at 110 (IPVS steals its packets at 99),
// output at -90 (IPVS rewrites at -98), so any new connection still
// addressed to a ClusterIP there is one IPVS has no virtual server for;
// forward sees only addresses that are not local, i.e. no ClusterIP, so an
// address of the service ranges there is an unallocated one.
// external-local, jumped from prerouting and output, DNATs Pods and the
// node from an externalTrafficPolicy Local address to its ClusterIP before
// IPVS looks; drop-input then runs before IPVS's LOCAL_IN hook and drops
// what is left for a Local virtual server without local endpoints, which
// IPVS would otherwise refuse. guard-prerouting and guard-output drop new
// connections to a ClusterIP of internalTrafficPolicy Local served only by
// other nodes (which IPVS would refuse), and to a load-balancer IP from
// outside its loadBalancerSourceRanges, at priority -110 (as kube-proxy's
// nftables mode does, "dstnat - 10"): after conntrack (-200) and before
// everything else here — the nat chains (-100), whose external-local DNAT
// would hide the address, and IPVS — for forwarded packets and the node's
// own alike.
const (
	prioGuard        = -110
	prioNAT          = -100
	prioRejectOutput = -90
	prioDropInput    = 0
	prioMasquerade   = 100
	prioRejectInput  = 110
	prioRejectFwd    = -110
	markChain        = "mark-masq"
	externalLocal    = "external-local"
)

// ipFamily is one IP family of the inet table.
type ipFamily struct {
	nft    nft.Family
	suffix string
}

var ipFamilies = []ipFamily{{nft.IP, "v4"}, {nft.IP6, "v6"}}

func (f ipFamily) has(a netip.Addr) bool { return a.Is4() == (f.nft == nft.IP) }

func (f ipFamily) tuple() []nft.Field {
	return []nft.Field{nft.Daddr(f.nft), nft.MetaL4Proto, nft.THDport}
}

func familyOf(a netip.Addr) ipFamily {
	if a.Is4() {
		return ipFamilies[0]
	}
	return ipFamilies[1]
}

func tupleValues(t Tuple) []nft.Value {
	return []nft.Value{nft.AddrValue(t.Addr), nft.NumValue(uint32(t.Protocol.Number())), nft.NumValue(uint32(t.Port))}
}

// Table is the proxyd-ipvs table r describes.
func (r *Ruleset) Table() *nft.Table {
	t := &nft.Table{Family: nft.INet, Name: TableName, Sets: r.sets()}
	base := func(name string, typ nft.ChainType, hook nft.Hook, prio int32, rules ...nft.Rule) *nft.Chain {
		return &nft.Chain{Name: name, Base: &nft.Base{Type: typ, Hook: hook, Priority: prio}, Rules: rules}
	}
	jumps := []nft.Rule{{nft.Jump(markChain)}, {nft.Jump(externalLocal)}}
	var rejectIn, rejectOut, rejectFwd, dropIn, post []nft.Rule
	newConn := nft.CtState{Bits: nft.CtNew}
	for _, f := range ipFamilies {
		vips := nft.Rule{newConn, nft.Lookup{Key: []nft.Field{nft.Daddr(f.nft)}, Set: "cluster-vips-" + f.suffix}, nft.Reject{Family: f.nft}}
		rejectIn, rejectOut = append(rejectIn, vips), append(rejectOut, vips)
		dropIn = append(dropIn, nft.Rule{newConn, nft.Lookup{Key: f.tuple(), Set: "external-drop-" + f.suffix}, nft.Drop})
		post = append(post, nft.Rule{nft.Lookup{Key: append(f.tuple(), nft.Saddr(f.nft)), Set: "hairpin-" + f.suffix}, nft.Masquerade{}})
	}
	for _, cidr := range r.ServiceCIDRs {
		f := familyOf(cidr.Addr())
		rule := nft.Rule{newConn, nft.AddrIn{Field: nft.Daddr(f.nft), Prefix: cidr}, nft.Reject{Family: f.nft}}
		rejectOut, rejectFwd = append(rejectOut, rule), append(rejectFwd, rule)
	}
	post = append(post, nft.Rule{nft.Mark{Mask: r.Mark, Not: true}, nft.SetMark{Op: nft.MarkAnd, Value: ^r.Mark}, nft.Masquerade{}})
	guard := r.guardRules()
	t.Chains = []*nft.Chain{
		base("prerouting", nft.NAT, nft.Prerouting, prioNAT, jumps...),
		base("output", nft.NAT, nft.Output, prioNAT, jumps...),
		{Name: markChain, Rules: r.markRules()},
		{Name: externalLocal, Rules: r.shortCircuitRules()},
		base("postrouting", nft.NAT, nft.Postrouting, prioMasquerade, post...),
		base("reject-input", nft.Filter, nft.Input, prioRejectInput, rejectIn...),
		base("reject-output", nft.Filter, nft.Output, prioRejectOutput, rejectOut...),
		base("reject-forward", nft.Filter, nft.Forward, prioRejectFwd, rejectFwd...),
		base("drop-input", nft.Filter, nft.Input, prioDropInput, dropIn...),
		base("guard-prerouting", nft.Filter, nft.Prerouting, prioGuard, guard...),
		base("guard-output", nft.Filter, nft.Output, prioGuard, guard...),
	}
	return t
}

// markRules mark for masquerade the traffic to a ClusterIP from outside
// the cluster CIDR of its family (all of it with MasqueradeAll), and all
// traffic to an external virtual server of externalTrafficPolicy Cluster.
func (r *Ruleset) markRules() []nft.Rule {
	mark := nft.SetMark{Op: nft.MarkOr, Value: r.Mark}
	var out []nft.Rule
	for _, f := range ipFamilies {
		toVIP := nft.Lookup{Key: f.tuple(), Set: "cluster-ips-" + f.suffix}
		cidr := r.ClusterCIDR4
		if f.nft == nft.IP6 {
			cidr = r.ClusterCIDR6
		}
		switch {
		case r.MasqueradeAll:
			out = append(out, nft.Rule{toVIP, mark})
		case cidr.IsValid():
			out = append(out, nft.Rule{toVIP, nft.AddrIn{Field: nft.Saddr(f.nft), Prefix: cidr, Not: true}, mark})
		}
	}
	for _, f := range ipFamilies {
		out = append(out, nft.Rule{nft.Lookup{Key: f.tuple(), Set: "external-masq-" + f.suffix}, mark})
	}
	return out
}

// guardRules drop a new connection to a ClusterIP virtual server of
// internal-drop (internalTrafficPolicy Local served only elsewhere), and
// one to a guarded load-balancer virtual server (lb-guarded) whose source
// no range of it admits (lb-sources, keyed by the virtual server and a
// source range).
func (r *Ruleset) guardRules() []nft.Rule {
	newConn := nft.CtState{Bits: nft.CtNew}
	var out []nft.Rule
	for _, f := range ipFamilies {
		out = append(out, nft.Rule{newConn, nft.Lookup{Key: f.tuple(), Set: internalDropSet + "-" + f.suffix}, nft.Drop})
	}
	for _, f := range ipFamilies {
		out = append(out, nft.Rule{newConn, nft.Lookup{Key: f.tuple(), Set: "lb-guarded-" + f.suffix},
			nft.Lookup{Key: append(f.tuple(), nft.Saddr(f.nft)), Set: "lb-sources-" + f.suffix, Not: true}, nft.Drop})
	}
	return out
}

// shortCircuitRules send Pods (the cluster CIDR) and the node itself (a
// local source address) from an externalTrafficPolicy Local address to its
// ClusterIP, marked for masquerade as ClusterIP traffic from there would be.
func (r *Ruleset) shortCircuitRules() []nft.Rule {
	mark := nft.SetMark{Op: nft.MarkOr, Value: r.Mark}
	var out []nft.Rule
	for _, sc := range r.ShortCircuits {
		f := familyOf(sc.From.Addr)
		match := nft.Rule{nft.AddrIn{Field: nft.Daddr(f.nft), Prefix: netip.PrefixFrom(sc.From.Addr, sc.From.Addr.BitLen())},
			nft.DPort{Proto: sc.From.Protocol.Number(), Port: sc.From.Port}}
		to := nft.DNAT{To: sc.To}
		if cidr := r.clusterCIDR(sc.From.Addr); cidr.IsValid() {
			rule := append(slices.Clone(match), nft.AddrIn{Field: nft.Saddr(f.nft), Prefix: cidr})
			if r.MasqueradeAll {
				rule = append(rule, mark)
			}
			out = append(out, append(rule, to))
		}
		out = append(out, append(slices.Clone(match), nft.FibLocal{Source: true}, mark, to))
	}
	return out
}

func (r *Ruleset) clusterCIDR(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return r.ClusterCIDR4
	}
	return r.ClusterCIDR6
}

func (r *Ruleset) sets() []*nft.Set {
	var out []*nft.Set
	for _, f := range ipFamilies {
		addr := nft.AddrType(f.nft)
		tupleSet := func(name string, list []Tuple) *nft.Set {
			s := &nft.Set{Name: name + "-" + f.suffix, Key: nft.KeyTypes(f.tuple()...)}
			for _, t := range list {
				if f.has(t.Addr) {
					s.Elements = append(s.Elements, nft.Element{Key: tupleValues(t)})
				}
			}
			return s
		}
		vips := &nft.Set{Name: "cluster-vips-" + f.suffix, Key: []nft.Type{addr}}
		for _, a := range r.vips() {
			if f.has(a) {
				vips.Elements = append(vips.Elements, nft.Element{Key: []nft.Value{nft.AddrValue(a)}})
			}
		}
		out = append(out, tupleSet("cluster-ips", r.ClusterIPs), vips,
			tupleSet("external-masq", r.ExternalMasq), tupleSet("external-drop", r.ExternalDrop),
			tupleSet(nodeServersSet, r.NodeServers))
		withSource := append(nft.KeyTypes(f.tuple()...), addr)
		hp := &nft.Set{Name: "hairpin-" + f.suffix, Key: withSource}
		for _, h := range r.Hairpin {
			if a := h.Endpoint.Addr(); f.has(a) {
				hp.Elements = append(hp.Elements, nft.Element{Key: append(tupleValues(Tuple{Addr: a, Protocol: h.Protocol, Port: h.Endpoint.Port()}), nft.AddrValue(a))})
			}
		}
		out = append(out, hp)
		var guarded []Tuple
		sources := &nft.Set{Name: "lb-sources-" + f.suffix, Key: withSource, Interval: true}
		for _, g := range r.SourceGuards {
			if !f.has(g.LB.Addr) {
				continue
			}
			guarded = append(guarded, g.LB)
			for _, p := range g.Sources {
				sources.Elements = append(sources.Elements, nft.Element{Key: append(tupleValues(g.LB), nft.PrefixValue(p))})
			}
		}
		out = append(out, tupleSet("lb-guarded", guarded), sources, tupleSet(internalDropSet, r.InternalDrop))
	}
	return out
}

// internalDropSet (with the family suffix) holds Ruleset.InternalDrop.
const internalDropSet = "internal-drop"

// nodeServersSet (with the family suffix) records the virtual servers on
// the node's own addresses; see Ruleset.NodeServers.
const nodeServersSet = "node-servers"

// nodeServers reads the NodeServers back from a table.
func nodeServers(t *nft.Table) []Tuple {
	var out []Tuple
	for _, f := range ipFamilies {
		s := t.Set(nodeServersSet + "-" + f.suffix)
		if s == nil {
			continue
		}
		for _, e := range s.Elements {
			if p, ok := model.ProtocolOf(uint8(e.Key[1].Num())); ok {
				out = append(out, Tuple{Addr: e.Key[0].Addr(), Protocol: p, Port: uint16(e.Key[2].Num())})
			}
		}
	}
	return out
}
