package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Render is the pure half of a sync: the IPVS table s asks for under the
// given scheduler. Each ClusterIP of a service port becomes a virtual server
// on the port's number and protocol; its real servers are the port's
// ClusterEndpoints of the same family, weight 1, as the model selected them.
// AffinitySeconds > 0 makes the virtual server persistent for that long.
// With internalTrafficPolicy Local and no local endpoint while other nodes
// have usable ones, the virtual server stays (without real servers) and is
// marked InternalDrop: the netfilter side drops its new connections before
// IPVS would refuse them.
//
// External traffic is served the way kube-proxy's IPVS mode does it: each
// external IP (and VIP-mode load-balancer IP) of the port becomes a virtual
// server on the port, bound to proxyd-ipvs0 like a ClusterIP, and a NodePort
// a virtual server on each of the node's addresses of the family (not
// bound: they are the node's own). Their real servers are the port's
// ExternalEndpoints; with externalTrafficPolicy Local the virtual server
// remembers the ClusterIP's, where the netfilter side sends Pods and the
// node itself. A load-balancer IP's virtual server carries the port's
// loadBalancerSourceRanges of its family, which the netfilter side
// enforces.
func Render(s *model.State, scheduler string) *Table {
	return RenderWith(s, scheduler, proxier.Config{})
}

// RenderWith is Render under cfg, whose NodePortAddresses choose the node
// addresses a NodePort gets a virtual server on.
func RenderWith(s *model.State, scheduler string, cfg proxier.Config) *Table {
	t := &Table{Servers: map[VSKey]*VirtualServer{}}
	if s == nil {
		return t
	}
	for _, p := range s.ServiceCIDRs {
		if p.IsValid() {
			t.ServiceCIDRs = append(t.ServiceCIDRs, p.Masked())
		}
	}
	nodeIPs := map[netip.Addr]bool{}
	for _, ip := range s.Node.IPs {
		if ip = ip.Unmap(); ip.IsValid() && !ip.IsUnspecified() && !nodeIPs[ip] {
			nodeIPs[ip] = true
			t.NodeIPs = append(t.NodeIPs, ip)
		}
	}
	slices.SortFunc(t.NodeIPs, netip.Addr.Compare)
	add := func(sp *model.ServicePort, k VSKey, eps []model.Endpoint) *VirtualServer {
		if prev, dup := t.Servers[k]; dup {
			t.Conflicts = append(t.Conflicts, fmt.Sprintf("%s wants %s, already used by %s", sp.Key, k, prev.Service))
			return nil
		}
		vs := &VirtualServer{VSKey: k, Scheduler: scheduler, Service: sp.Key}
		if sp.AffinitySeconds > 0 {
			vs.Timeout = uint32(sp.AffinitySeconds)
		}
		for _, e := range model.EndpointsOf(eps, model.FamilyOf(k.Addr)) {
			if !e.IP.IsValid() || e.Port == 0 {
				continue
			}
			vs.RealServers = append(vs.RealServers, RealServer{Addr: netip.AddrPortFrom(e.IP.Unmap(), e.Port), Weight: 1})
		}
		slices.SortFunc(vs.RealServers, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
		vs.RealServers = slices.CompactFunc(vs.RealServers, func(a, b RealServer) bool { return a.Addr == b.Addr })
		t.Servers[k] = vs
		return vs
	}
	sorted := s.Sorted()
	// ClusterIPs first, so that an external address or NodePort never
	// takes a ClusterIP's virtual server away.
	for _, sp := range sorted {
		if !sp.Key.Protocol.Valid() || sp.Port == 0 {
			continue
		}
		for _, ip := range sp.ClusterIPs {
			if !ip.IsValid() {
				continue
			}
			if vs := add(sp, VSKey{Addr: ip.Unmap(), Protocol: sp.Key.Protocol, Port: sp.Port}, sp.ClusterEndpoints); vs != nil {
				vs.InternalDrop = sp.ClusterDrops(model.FamilyOf(vs.Addr))
			}
		}
	}
	for _, sp := range sorted {
		if !sp.Key.Protocol.Valid() || sp.Port == 0 || !sp.HasExternal() {
			continue
		}
		lbIPs := map[netip.Addr]bool{}
		for _, ip := range sp.LoadBalancerIPs {
			lbIPs[ip.Unmap()] = true
		}
		// external adds the virtual server of an external address (a
		// load-balancer IP when lb, which loadBalancerSourceRanges guard)
		// or of a NodePort.
		external := func(k VSKey, onNode, lb bool) {
			vs := add(sp, k, sp.ExternalEndpoints)
			if vs == nil {
				return
			}
			vs.External, vs.OnNode, vs.Local = true, onNode, sp.ExternalLocal
			if lb {
				vs.SourceRanges = familyPrefixes(sp.SourceRanges, model.FamilyOf(k.Addr))
			}
			if !sp.ExternalLocal {
				return
			}
			f := model.FamilyOf(k.Addr)
			if vip, ok := sp.ClusterIP(f); ok && len(model.EndpointsOf(sp.ClusterEndpoints, f)) > 0 {
				ck := VSKey{Addr: vip.Unmap(), Protocol: sp.Key.Protocol, Port: sp.Port}
				if cvs := t.Servers[ck]; cvs != nil && cvs.Service == sp.Key {
					vs.ShortCircuit = netip.AddrPortFrom(ck.Addr, ck.Port)
				}
			}
		}
		fams := map[model.IPFamily]bool{}
		for _, ip := range sp.ClusterIPs {
			fams[model.FamilyOf(ip)] = true
		}
		for _, ip := range sp.ExternalIPs {
			if ip = ip.Unmap(); ip.IsValid() && fams[model.FamilyOf(ip)] {
				external(VSKey{Addr: ip, Protocol: sp.Key.Protocol, Port: sp.Port}, nodeIPs[ip], lbIPs[ip])
			}
		}
		if sp.NodePort != 0 {
			for _, ip := range t.NodeIPs {
				if fams[model.FamilyOf(ip)] && nodePortOn(cfg, s.Node, ip) {
					external(VSKey{Addr: ip, Protocol: sp.Key.Protocol, Port: sp.NodePort}, true, false)
				}
			}
		}
	}
	return t
}

// familyPrefixes returns the prefixes of ps of family f, masked, IPv4 ones
// in their 4-byte form, sorted, without one another contains; nil if none.
func familyPrefixes(ps []netip.Prefix, f model.IPFamily) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		if a := p.Addr(); a.Is4In6() {
			if p.Bits() < 96 {
				continue
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if model.FamilyOf(p.Addr()) == f {
			out = append(out, p.Masked())
		}
	}
	// Shorter prefixes first: a prefix is then dropped when one kept
	// before it contains it (two prefixes either nest or are disjoint).
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(cmp.Compare(a.Bits(), b.Bits()), a.Addr().Compare(b.Addr()))
	})
	var kept []netip.Prefix
	for _, p := range out {
		if !slices.ContainsFunc(kept, func(k netip.Prefix) bool { return k.Contains(p.Addr()) }) {
			kept = append(kept, p)
		}
	}
	slices.SortFunc(kept, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return kept
}

// sourceGuard is the guard of a load-balancer virtual server with source
// ranges. As in kube-proxy's IPVS mode, when a range admits one of the
// node's addresses the load-balancer IP itself is admitted too: the node
// reaches an address bound to proxyd-ipvs0 from that very address.
func sourceGuard(vs *VirtualServer, nodeIPs []netip.Addr) SourceGuard {
	sources := slices.Clone(vs.SourceRanges)
	for _, ip := range nodeIPs {
		if slices.ContainsFunc(vs.SourceRanges, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			sources = append(sources, netip.PrefixFrom(vs.Addr, vs.Addr.BitLen()))
			break
		}
	}
	return SourceGuard{LB: Tuple{Addr: vs.Addr, Protocol: vs.Protocol, Port: vs.Port}, Sources: familyPrefixes(sources, model.FamilyOf(vs.Addr))}
}

// RenderNetfilter derives the netfilter side of t under cfg, including a
// SourceGuard for each virtual server with SourceRanges and an InternalDrop
// tuple for each one marked InternalDrop.
func RenderNetfilter(t *Table, cfg proxier.Config) *Ruleset {
	r := &Ruleset{MasqueradeAll: cfg.MasqueradeAll, Mark: cfg.Mark(), ServiceCIDRs: slices.Clone(t.ServiceCIDRs)}
	if p, ok := cfg.ClusterCIDR(4); ok {
		r.ClusterCIDR4 = p.Masked()
	}
	if p, ok := cfg.ClusterCIDR(6); ok {
		r.ClusterCIDR6 = p.Masked()
	}
	hairpin := map[HairpinTuple]bool{}
	for _, vs := range t.Sorted() {
		tu := Tuple{Addr: vs.Addr, Protocol: vs.Protocol, Port: vs.Port}
		if vs.OnNode {
			r.NodeServers = append(r.NodeServers, tu)
		}
		if len(vs.SourceRanges) > 0 {
			r.SourceGuards = append(r.SourceGuards, sourceGuard(vs, t.NodeIPs))
		}
		switch {
		case !vs.External:
			r.ClusterIPs = append(r.ClusterIPs, tu)
			if vs.InternalDrop {
				r.InternalDrop = append(r.InternalDrop, tu)
			}
		case !vs.Local:
			r.ExternalMasq = append(r.ExternalMasq, tu)
		default:
			if vs.ShortCircuit.IsValid() {
				r.ShortCircuits = append(r.ShortCircuits, ShortCircuit{From: tu, To: vs.ShortCircuit})
				if len(vs.RealServers) == 0 {
					r.ExternalDrop = append(r.ExternalDrop, tu)
				}
			}
		}
		for _, rs := range vs.RealServers {
			hairpin[HairpinTuple{Endpoint: rs.Addr, Protocol: vs.Protocol}] = true
		}
	}
	for h := range hairpin {
		r.Hairpin = append(r.Hairpin, h)
	}
	slices.SortFunc(r.Hairpin, func(a, b HairpinTuple) int {
		return cmp.Or(a.Endpoint.Compare(b.Endpoint), cmp.Compare(a.Protocol, b.Protocol))
	})
	return r
}

// nodePortOn reports whether --nodeport-addresses lets NodePorts answer on
// the node address ip.
func nodePortOn(cfg proxier.Config, node model.Node, ip netip.Addr) bool {
	ips, all := cfg.NodePortIPs(node, model.FamilyOf(ip))
	return all || slices.Contains(ips, ip)
}
