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
func Render(s *model.State, scheduler string) *Table {
	t := &Table{Servers: map[VSKey]*VirtualServer{}}
	if s == nil {
		return t
	}
	for _, p := range s.ServiceCIDRs {
		if p.IsValid() {
			t.ServiceCIDRs = append(t.ServiceCIDRs, p.Masked())
		}
	}
	for _, sp := range s.Sorted() {
		if !sp.Key.Protocol.Valid() || sp.Port == 0 {
			continue
		}
		for _, ip := range sp.ClusterIPs {
			if !ip.IsValid() {
				continue
			}
			k := VSKey{Addr: ip.Unmap(), Protocol: sp.Key.Protocol, Port: sp.Port}
			if prev, dup := t.Servers[k]; dup {
				t.Conflicts = append(t.Conflicts, fmt.Sprintf("%s wants %s, already used by %s", sp.Key, k, prev.Service))
				continue
			}
			vs := &VirtualServer{VSKey: k, Scheduler: scheduler, Service: sp.Key}
			if sp.AffinitySeconds > 0 {
				vs.Timeout = uint32(sp.AffinitySeconds)
			}
			for _, e := range model.EndpointsOf(sp.ClusterEndpoints, model.FamilyOf(k.Addr)) {
				if !e.IP.IsValid() || e.Port == 0 {
					continue
				}
				vs.RealServers = append(vs.RealServers, RealServer{Addr: netip.AddrPortFrom(e.IP.Unmap(), e.Port), Weight: 1})
			}
			slices.SortFunc(vs.RealServers, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
			vs.RealServers = slices.CompactFunc(vs.RealServers, func(a, b RealServer) bool { return a.Addr == b.Addr })
			t.Servers[k] = vs
		}
	}
	return t
}

// RenderNetfilter derives the netfilter side of t under cfg.
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
		r.ClusterIPs = append(r.ClusterIPs, tu)
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
