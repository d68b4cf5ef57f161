// Package convert turns the API objects proxyd watches into the plain
// types of pkg/model, once, at the edge: it leaves out what proxyd must
// ignore and every part no rule can carry, and says what it left out and
// why (Drop). It depends on the API types only, not on client-go, so its
// fuzz targets build quickly.
package convert

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"unique"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networking "k8s.io/api/networking/v1"

	"github.com/proxyd/proxyd/pkg/model"
)

// LabelServiceProxyName is the label that hands a Service (and, copied by the
// EndpointSlice controller, its slices) to a proxy other than the default
// one. kube-proxy ignores every object carrying it; proxyd ignores it unless
// its value is the proxy name proxyd was given.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Admitted reports whether an object with these labels is for this proxy:
// it is not labelled headless, and it either has no service-proxy-name label
// or one whose value is proxyName. An empty proxyName admits only unlabelled
// objects, as kube-proxy does.
func Admitted(labels map[string]string, proxyName string) bool {
	if _, headless := labels[v1.IsHeadlessService]; headless {
		return false
	}
	v, named := labels[LabelServiceProxyName]
	return !named || (proxyName != "" && v == proxyName)
}

// Service returns the model view of svc, or nil when proxyd must
// ignore it: another proxy's or a headless-labelled Service, type
// ExternalName, no cluster IP or clusterIP "None", or no cluster IP that
// parses. Every part it leaves out of an object it otherwise uses (an
// address that does not parse, has a zone or is of a family the Service
// does not have, a port with a bad number or a protocol proxyd does not
// program), and an ExternalName Service, is returned as a Drop, for the
// caller to report. It never panics.
func Service(svc *v1.Service, proxyName string) (*model.Service, []Drop) {
	if svc == nil || !Admitted(svc.Labels, proxyName) {
		return nil, nil
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil, []Drop{{Field: "spec.type", Value: string(svc.Spec.Type), Expected: true,
			Reason: "an ExternalName Service is answered by DNS; there is nothing to proxy"}}
	}
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	if len(raw) == 0 || svc.Spec.ClusterIP == v1.ClusterIPNone || raw[0] == v1.ClusterIPNone {
		return nil, nil
	}

	var ds drops
	out := &model.Service{Namespace: svc.Namespace, Name: svc.Name, UID: string(svc.UID), Created: svc.CreationTimestamp.Time}
	families := map[model.IPFamily]bool{}
	for i, s := range raw {
		ip, err := parseAddr(s)
		if err != nil {
			ds.add(fmt.Sprintf("spec.clusterIPs[%d]", i), s, err.Error())
			continue
		}
		out.ClusterIPs = append(out.ClusterIPs, ip)
		families[model.FamilyOf(ip)] = true
	}
	if len(out.ClusterIPs) == 0 {
		return nil, append(ds, Drop{Reason: "no usable cluster IP: the Service is not proxied"})
	}

	for i, p := range svc.Spec.Ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		port, ok := portNumber(p.Port)
		if !ok {
			ds.add(field+".port", strconv.Itoa(int(p.Port)), "not a port number (1-65535): the port is not proxied")
			continue
		}
		proto := protocol(p.Protocol)
		if !proto.Valid() {
			ds.add(field+".protocol", string(p.Protocol), "not a protocol proxyd programs (TCP, UDP, SCTP): the port is not proxied")
			continue
		}
		nodePort, ok := portNumber(p.NodePort)
		if !ok && p.NodePort != 0 {
			ds.add(field+".nodePort", strconv.Itoa(int(p.NodePort)), "not a port number (1-65535): no NodePort")
		}
		out.Ports = append(out.Ports, model.ServicePortSpec{Name: p.Name, Protocol: proto, Port: port, NodePort: nodePort})
	}

	itp := svc.Spec.InternalTrafficPolicy
	out.InternalLocal = itp != nil && *itp == v1.ServiceInternalTrafficPolicyLocal
	// The apiserver clears externalTrafficPolicy on types that have no
	// external traffic, so it is converted as given.
	out.ExternalLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		out.AffinitySeconds = affinityTimeout(svc.Spec.SessionAffinityConfig)
	}
	if td := svc.Spec.TrafficDistribution; td != nil {
		out.TrafficDistribution = *td
	}
	for i, s := range svc.Spec.ExternalIPs {
		out.ExternalIPs = ds.addr(out.ExternalIPs, fmt.Sprintf("spec.externalIPs[%d]", i), s, families)
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for i, ing := range svc.Status.LoadBalancer.Ingress {
			// An ingress in Proxy mode is reached through the load
			// balancer, which proxies; only VIP mode is the node's job.
			if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == v1.LoadBalancerIPModeVIP) {
				out.LoadBalancerIPs = ds.addr(out.LoadBalancerIPs, fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP, families)
			}
		}
		for i, s := range svc.Spec.LoadBalancerSourceRanges {
			p, err := parsePrefix(s)
			if err != nil {
				ds.add(fmt.Sprintf("spec.loadBalancerSourceRanges[%d]", i), s, err.Error())
				continue
			}
			out.LoadBalancerSourceRanges = append(out.LoadBalancerSourceRanges, p)
		}
		if out.ExternalLocal {
			// The apiserver allocates it exactly then; anything else in
			// the field is ignored, as kube-proxy ignores it.
			var ok bool
			if out.HealthCheckNodePort, ok = portNumber(svc.Spec.HealthCheckNodePort); !ok {
				ds.add("spec.healthCheckNodePort", strconv.Itoa(int(svc.Spec.HealthCheckNodePort)), "not a port number (1-65535): no health check is served")
			}
		}
	}
	return out, ds
}

// addr appends the address s of field to out if it parses and is of one of
// the Service's families; otherwise it records the Drop.
func (ds *drops) addr(out []netip.Addr, field, s string, families map[model.IPFamily]bool) []netip.Addr {
	ip, err := parseAddr(s)
	switch {
	case err != nil:
		ds.add(field, s, err.Error())
	case !families[model.FamilyOf(ip)]:
		ds.add(field, s, "the Service has no "+model.FamilyOf(ip).String()+" cluster IP")
	default:
		out = append(out, ip)
	}
	return out
}

// affinityTimeout is the ClientIP affinity timeout, the API's default when
// unset (or, defensively, when not positive).
func affinityTimeout(cfg *v1.SessionAffinityConfig) int32 {
	if cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil && *cfg.ClientIP.TimeoutSeconds > 0 {
		return *cfg.ClientIP.TimeoutSeconds
	}
	return v1.DefaultClientIPServiceAffinitySeconds
}

// EndpointSlice returns the model view of es, or nil when proxyd must
// ignore it: another proxy's or a headless Service's slice, no
// kubernetes.io/service-name label, or an address type other than
// IPv4/IPv6 (the last returned as a Drop). Ports without a number, with a
// bad one or a protocol proxyd does not program, and addresses that do not
// parse, have a zone or are of the wrong family are left out and returned
// as Drops; so is an endpoint left without an address. The API's defaults
// for unset conditions are applied: ready true, serving = ready,
// terminating false.
func EndpointSlice(es *discovery.EndpointSlice, proxyName string) (*model.EndpointSlice, []Drop) {
	if es == nil || !Admitted(es.Labels, proxyName) {
		return nil, nil
	}
	svcName := es.Labels[discovery.LabelServiceName]
	if svcName == "" {
		return nil, nil
	}
	var family model.IPFamily
	switch es.AddressType {
	case discovery.AddressTypeIPv4:
		family = model.IPv4
	case discovery.AddressTypeIPv6:
		family = model.IPv6
	default:
		return nil, []Drop{{Field: "addressType", Value: string(es.AddressType), Reason: "only IPv4 and IPv6 slices are proxied"}}
	}

	var ds drops
	out := &model.EndpointSlice{Namespace: es.Namespace, Name: es.Name, ServiceName: svcName, Family: family,
		Ports: make([]model.SlicePort, 0, len(es.Ports)), Endpoints: make([]model.SliceEndpoint, 0, len(es.Endpoints))}
	// One array holds every endpoint's addresses, each endpoint a capped
	// window of it: a slice costs one allocation for them, not one each.
	n := 0
	for _, ep := range es.Endpoints {
		n += len(ep.Addresses)
	}
	addrs := make([]netip.Addr, 0, n)
	for i, p := range es.Ports {
		field := fmt.Sprintf("ports[%d]", i)
		if p.Port == nil {
			ds.add(field+".port", "", "no port number: the port is not proxied")
			continue
		}
		port, ok := portNumber(*p.Port)
		if !ok {
			ds.add(field+".port", strconv.Itoa(int(*p.Port)), "not a port number (1-65535): the port is not proxied")
			continue
		}
		sp := model.SlicePort{Protocol: model.TCP, Port: port}
		if p.Name != nil {
			sp.Name = *p.Name
		}
		if p.Protocol != nil {
			sp.Protocol = protocol(*p.Protocol)
		}
		if !sp.Protocol.Valid() {
			ds.add(field+".protocol", string(sp.Protocol), "not a protocol proxyd programs (TCP, UDP, SCTP): the port is not proxied")
			continue
		}
		out.Ports = append(out.Ports, sp)
	}

	for i, ep := range es.Endpoints {
		se := model.SliceEndpoint{}
		first := len(addrs)
		for j, s := range ep.Addresses {
			ip, err := parseAddr(s)
			field := fmt.Sprintf("endpoints[%d].addresses[%d]", i, j)
			switch {
			case err != nil:
				ds.add(field, s, err.Error())
			case model.FamilyOf(ip) != family:
				ds.add(field, s, "not an address of the slice's type "+string(es.AddressType))
			default:
				addrs = append(addrs, ip)
			}
		}
		se.Addresses = addrs[first:len(addrs):len(addrs)]
		if len(se.Addresses) == 0 {
			ds.add(fmt.Sprintf("endpoints[%d]", i), "", "no usable address: the endpoint is not used")
			continue
		}
		c := ep.Conditions
		se.Ready = c.Ready == nil || *c.Ready
		se.Serving = se.Ready
		if c.Serving != nil {
			se.Serving = *c.Serving
		}
		se.Terminating = c.Terminating != nil && *c.Terminating
		if ep.NodeName != nil {
			se.NodeName = intern(*ep.NodeName)
		}
		if ep.Zone != nil {
			se.Zone = intern(*ep.Zone)
		}
		if h := ep.Hints; h != nil {
			var zones, nodes []string
			for _, z := range h.ForZones {
				if z.Name != "" {
					zones = append(zones, intern(z.Name))
				}
			}
			for _, n := range h.ForNodes {
				if n.Name != "" {
					nodes = append(nodes, intern(n.Name))
				}
			}
			if len(zones)+len(nodes) > 0 {
				slices.Sort(zones)
				slices.Sort(nodes)
				se.Hints = &model.Hints{Zones: slices.Compact(zones), Nodes: slices.Compact(nodes)}
			}
		}
		out.Endpoints = append(out.Endpoints, se)
	}
	return out, ds
}

// Node returns the model view of node: its name, its
// topology.kubernetes.io/zone label, its InternalIP then ExternalIP addresses
// (repeated ones dropped; unusable ones dropped and returned as Drops) and
// whether its Ready condition is True.
func Node(node *v1.Node) (model.Node, []Drop) {
	if node == nil {
		return model.Node{}, nil
	}
	var ds drops
	out := model.Node{Name: node.Name, Zone: node.Labels[v1.LabelTopologyZone]}
	seen := map[netip.Addr]bool{}
	for _, typ := range [...]v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for i, a := range node.Status.Addresses {
			if a.Type != typ {
				continue
			}
			ip, err := parseAddr(a.Address)
			if err != nil {
				ds.add(fmt.Sprintf("status.addresses[%d]", i), a.Address, err.Error())
				continue
			}
			if !seen[ip] {
				seen[ip] = true
				out.IPs = append(out.IPs, ip)
			}
		}
	}
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			out.Ready = c.Status == v1.ConditionTrue
		}
	}
	out.Retiring = node.DeletionTimestamp != nil
	for _, t := range node.Spec.Taints {
		out.Retiring = out.Retiring || t.Key == ToBeDeletedTaint
	}
	return out, ds
}

// ServiceCIDR returns the ranges of a networking.k8s.io/v1 ServiceCIDR,
// masked; the ones that do not parse are left out and returned as Drops.
func ServiceCIDR(c *networking.ServiceCIDR) ([]netip.Prefix, []Drop) {
	var out []netip.Prefix
	var ds drops
	for n, s := range c.Spec.CIDRs {
		p, err := parsePrefix(s)
		if err != nil {
			ds.add(fmt.Sprintf("spec.cidrs[%d]", n), s, err.Error())
			continue
		}
		out = append(out, p)
	}
	return out, ds
}

// ToBeDeletedTaint is the cluster autoscaler's taint on a node it is about
// to remove.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// intern returns the one copy of s that every converted object shares:
// node and zone names repeat across the endpoints of a cluster.
func intern(s string) string { return unique.Make(s).Value() }

// portNumber converts an API port number, reporting whether it is a usable
// port (1-65535).
func portNumber(n int32) (uint16, bool) {
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// protocol applies the API's default protocol, TCP, to an empty one. Other
// values are kept as given, for the caller to check.
func protocol(p v1.Protocol) model.Protocol {
	if p == "" {
		return model.TCP
	}
	return model.Protocol(p)
}
