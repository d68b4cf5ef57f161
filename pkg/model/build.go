package model

import (
	"cmp"
	"net/netip"
	"slices"
)

// Build turns a snapshot into the State the node must program. It never
// fails: objects it cannot use are left out, exactly as kube-proxy would,
// and conflicting claims are settled (see Conflict).
func Build(snap Snapshot) *State {
	var b Builder
	st, _ := b.Update(Changes{Node: &snap.Node, Services: snap.Services, Slices: snap.Slices,
		ServiceCIDRs: snap.ServiceCIDRs, CIDRsChanged: true})
	return st
}

func buildService(name NamespacedName, svc *Service, list []*EndpointSlice, node Node) []*ServicePort {
	ips := clusterIPs(svc.ClusterIPs)
	if len(ips) == 0 {
		return nil
	}
	var out []*ServicePort
	seen := map[ServicePortKey]bool{}
	for _, p := range svc.Ports {
		if !p.Protocol.Valid() || p.Port == 0 {
			continue
		}
		key := ServicePortKey{Namespace: name.Namespace, Name: name.Name, Port: p.Name, Protocol: p.Protocol}
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, buildPort(key, svc, p, ips, list, node))
	}
	return out
}

// rebuildPort builds the port key of svc again with only the ClusterIPs
// ips (some were lost to another Service); nil when none is left.
func rebuildPort(key ServicePortKey, svc *Service, ips []netip.Addr, list []*EndpointSlice, node Node) *ServicePort {
	if len(ips) == 0 {
		return nil
	}
	for _, p := range svc.Ports {
		// The spec buildService made the port of: the first usable one
		// with its name and protocol.
		if p.Name == key.Port && p.Protocol == key.Protocol && p.Protocol.Valid() && p.Port != 0 {
			return buildPort(key, svc, p, ips, list, node)
		}
	}
	return nil
}

func buildPort(key ServicePortKey, svc *Service, p ServicePortSpec, ips []netip.Addr, list []*EndpointSlice, node Node) *ServicePort {
	sp := &ServicePort{
		Key:                 key,
		ClusterIPs:          ips,
		Port:                p.Port,
		NodePort:            p.NodePort,
		InternalLocal:       svc.InternalLocal,
		ExternalLocal:       svc.ExternalLocal,
		AffinitySeconds:     svc.AffinitySeconds,
		TrafficDistribution: svc.TrafficDistribution,
		ExternalIPs:         externalIPs(svc, ips),
		LoadBalancerIPs:     familyAddrs(svc.LoadBalancerIPs, ips),
		SourceRanges:        sourceRanges(svc, ips, node),
		HealthCheckNodePort: svc.HealthCheckNodePort,
	}
	sp.Endpoints = mergeEndpoints(list, p, families(ips))
	sp.ClusterEndpoints = SelectEndpoints(sp, node)
	sp.ExternalEndpoints = SelectExternalEndpoints(sp, node)
	return sp
}

// normalPrefixes masks the valid prefixes of in, sorts and deduplicates them.
func normalPrefixes(in []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range in {
		if p.IsValid() {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	return slices.Compact(out)
}

// clusterIPs keeps the first valid address of each family, in order.
func clusterIPs(in []netip.Addr) []netip.Addr {
	var out []netip.Addr
	seen := map[IPFamily]bool{}
	for _, ip := range in {
		ip = ip.Unmap()
		if !usable(ip) {
			continue
		}
		f := FamilyOf(ip)
		if seen[f] {
			continue
		}
		seen[f] = true
		out = append(out, ip)
	}
	return out
}

// externalIPs are the external and load-balancer addresses of families
// the Service has, deduplicated, sorted.
func externalIPs(svc *Service, clusterIPs []netip.Addr) []netip.Addr {
	return familyAddrs(slices.Concat(svc.ExternalIPs, svc.LoadBalancerIPs), clusterIPs)
}

// sourceRanges keeps the ranges of the Service's families, masked, sorted,
// deduplicated. A range of length 0 allows every source of its family, as
// no ranges do. When a range admits one of the node's addresses, the
// load-balancer IPs of that family are admitted as sources too, as in
// kube-proxy: a node that holds the address reaches it from it.
func sourceRanges(svc *Service, clusterIPs []netip.Addr, node Node) []netip.Prefix {
	fams := families(clusterIPs)
	for _, p := range svc.LoadBalancerSourceRanges {
		if p.IsValid() && p.Bits() == 0 {
			fams[FamilyOf(p.Addr())] = false
		}
	}
	var out []netip.Prefix
	admitsNode := map[IPFamily]bool{}
	for _, p := range svc.LoadBalancerSourceRanges {
		if !p.IsValid() || !fams[FamilyOf(p.Addr())] {
			continue
		}
		out = append(out, p)
		for _, ip := range node.IPs {
			admitsNode[FamilyOf(ip)] = admitsNode[FamilyOf(ip)] || p.Masked().Contains(ip.Unmap())
		}
	}
	for _, ip := range familyAddrs(svc.LoadBalancerIPs, clusterIPs) {
		if admitsNode[FamilyOf(ip)] {
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	return normalPrefixes(out)
}

// familyAddrs are the usable addresses of in whose family the Service
// has, deduplicated, sorted.
func familyAddrs(in, clusterIPs []netip.Addr) []netip.Addr {
	fams := families(clusterIPs)
	var out []netip.Addr
	for _, ip := range in {
		ip = ip.Unmap()
		if usable(ip) && !ip.IsLoopback() && fams[FamilyOf(ip)] {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// usable reports whether ip can be written into a rule: valid, not the
// unspecified address, and without an IPv6 zone (which names an interface
// of the sender, and means nothing on this node).
func usable(ip netip.Addr) bool {
	return ip.IsValid() && !ip.IsUnspecified() && ip.Zone() == ""
}

func families(ips []netip.Addr) map[IPFamily]bool {
	out := map[IPFamily]bool{}
	for _, ip := range ips {
		out[FamilyOf(ip)] = true
	}
	return out
}

// mergeEndpoints collects the endpoints of one service port from all the
// Service's slices: the slice port must match by name and protocol, the
// family must be one the Service has, and an address seen in several slices
// counts once (ready wins over not ready, then the first slice by name).
func mergeEndpoints(list []*EndpointSlice, p ServicePortSpec, fams map[IPFamily]bool) []Endpoint {
	n := 0
	for _, es := range list {
		n += len(es.Endpoints)
	}
	byAddr := make(map[netip.AddrPort]int, n)
	out := make([]Endpoint, 0, n)
	for _, es := range list {
		if !fams[es.Family] {
			continue
		}
		port, ok := slicePort(es.Ports, p)
		if !ok {
			continue
		}
		for _, se := range es.Endpoints {
			if len(se.Addresses) == 0 {
				continue
			}
			// Like kube-proxy, only the first address of an endpoint is used.
			ip := se.Addresses[0].Unmap()
			if !usable(ip) || FamilyOf(ip) != es.Family {
				continue
			}
			ep := Endpoint{
				IP: ip, Port: port,
				Ready: se.Ready, Serving: se.Serving, Terminating: se.Terminating,
				NodeName: se.NodeName, Zone: se.Zone, Hints: se.Hints.normal(),
			}
			ap := ep.AddrPort()
			if i, dup := byAddr[ap]; dup {
				if !out[i].Ready && ep.Ready {
					out[i] = ep
				}
				continue
			}
			byAddr[ap] = len(out)
			out = append(out, ep)
		}
	}
	if len(out) == 0 {
		return nil
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) })
	return out
}

func slicePort(ports []SlicePort, p ServicePortSpec) (uint16, bool) {
	for _, sp := range ports {
		if sp.Name == p.Name && sp.Protocol == p.Protocol && sp.Port != 0 {
			return sp.Port, true
		}
	}
	return 0, false
}

func sortedCopy(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}
