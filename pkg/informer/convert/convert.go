package informer

import (
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
)

// LabelServiceProxyName is the label that hands a Service (and, copied by the
// EndpointSlice controller, its slices) to a proxy other than the default
// one. kube-proxy ignores every object carrying it; proxyd ignores it unless
// its value is Options.ProxyName.
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

// ConvertService returns the model view of svc, or nil when proxyd must
// ignore it: another proxy's or a headless-labelled Service, type
// ExternalName, no cluster IP or clusterIP "None", or no cluster IP that
// parses. Malformed fields are dropped with a V(2) log line; it never panics.
func ConvertService(logger klog.Logger, svc *v1.Service, proxyName string) *model.Service {
	if svc == nil || !Admitted(svc.Labels, proxyName) || svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	if len(raw) == 0 || svc.Spec.ClusterIP == v1.ClusterIPNone || raw[0] == v1.ClusterIPNone {
		return nil
	}

	out := &model.Service{Namespace: svc.Namespace, Name: svc.Name}
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			logger.V(2).Info("Dropping invalid cluster IP", "service", klog.KObj(svc), "clusterIP", s)
			continue
		}
		out.ClusterIPs = append(out.ClusterIPs, ip)
	}
	if len(out.ClusterIPs) == 0 {
		logger.V(2).Info("Ignoring service without a valid cluster IP", "service", klog.KObj(svc))
		return nil
	}

	for _, p := range svc.Spec.Ports {
		port, ok := portNumber(p.Port)
		if !ok {
			logger.V(2).Info("Dropping service port with invalid number", "service", klog.KObj(svc), "port", p.Name, "number", p.Port)
			continue
		}
		nodePort, ok := portNumber(p.NodePort)
		if !ok && p.NodePort != 0 {
			logger.V(2).Info("Ignoring invalid node port", "service", klog.KObj(svc), "port", p.Name, "nodePort", p.NodePort)
		}
		out.Ports = append(out.Ports, model.ServicePortSpec{
			Name:     p.Name,
			Protocol: protocol(p.Protocol),
			Port:     port,
			NodePort: nodePort,
		})
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
	out.ExternalIPs = parseIPs(logger, svc, "externalIP", svc.Spec.ExternalIPs)
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		var lb []string
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// An ingress in Proxy mode is reached through the load
			// balancer, which proxies; only VIP mode is the node's job.
			if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == v1.LoadBalancerIPModeVIP) {
				lb = append(lb, ing.IP)
			}
		}
		out.LoadBalancerIPs = parseIPs(logger, svc, "loadBalancerIP", lb)
		out.LoadBalancerSourceRanges = parsePrefixes(logger, svc, svc.Spec.LoadBalancerSourceRanges)
		if out.ExternalLocal {
			// The apiserver allocates it exactly then; anything else in
			// the field is ignored, as kube-proxy ignores it.
			out.HealthCheckNodePort, _ = portNumber(svc.Spec.HealthCheckNodePort)
		}
	}
	return out
}

// parsePrefixes reads loadBalancerSourceRanges, which validation lets carry
// surrounding spaces. The apiserver rejects a malformed range; one that
// still arrives is dropped and logged, as kube-proxy drops it.
func parsePrefixes(logger klog.Logger, svc *v1.Service, raw []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range raw {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			logger.V(2).Info("Dropping invalid address range", "service", klog.KObj(svc), "field", "loadBalancerSourceRanges", "value", s)
			continue
		}
		out = append(out, p)
	}
	return out
}

func parseIPs(logger klog.Logger, svc *v1.Service, what string, raw []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			logger.V(2).Info("Dropping invalid address", "service", klog.KObj(svc), "field", what, "value", s)
			continue
		}
		out = append(out, ip.Unmap())
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

// ConvertEndpointSlice returns the model view of es, or nil when proxyd must
// ignore it: another proxy's or a headless Service's slice, an address type
// other than IPv4/IPv6, or no kubernetes.io/service-name label. Ports without
// a number, unparsable addresses, addresses of the wrong family and endpoints
// left without an address are dropped. The API's defaults for unset
// conditions are applied: ready true, serving = ready, terminating false.
func ConvertEndpointSlice(logger klog.Logger, es *discovery.EndpointSlice, proxyName string) *model.EndpointSlice {
	if es == nil || !Admitted(es.Labels, proxyName) {
		return nil
	}
	var family model.IPFamily
	switch es.AddressType {
	case discovery.AddressTypeIPv4:
		family = model.IPv4
	case discovery.AddressTypeIPv6:
		family = model.IPv6
	default:
		return nil
	}
	svcName := es.Labels[discovery.LabelServiceName]
	if svcName == "" {
		return nil
	}

	out := &model.EndpointSlice{Namespace: es.Namespace, Name: es.Name, ServiceName: svcName, Family: family}
	for _, p := range es.Ports {
		if p.Port == nil {
			continue
		}
		port, ok := portNumber(*p.Port)
		if !ok {
			logger.V(2).Info("Dropping slice port with invalid number", "endpointSlice", klog.KObj(es), "number", *p.Port)
			continue
		}
		sp := model.SlicePort{Protocol: model.TCP, Port: port}
		if p.Name != nil {
			sp.Name = *p.Name
		}
		if p.Protocol != nil {
			sp.Protocol = protocol(*p.Protocol)
		}
		out.Ports = append(out.Ports, sp)
	}

	for _, ep := range es.Endpoints {
		se := model.SliceEndpoint{}
		for _, s := range ep.Addresses {
			ip, err := netip.ParseAddr(s)
			if err != nil || model.FamilyOf(ip) != family {
				logger.V(2).Info("Dropping invalid endpoint address", "endpointSlice", klog.KObj(es), "address", s, "addressType", es.AddressType)
				continue
			}
			se.Addresses = append(se.Addresses, ip)
		}
		if len(se.Addresses) == 0 {
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
			se.NodeName = *ep.NodeName
		}
		if ep.Zone != nil {
			se.Zone = *ep.Zone
		}
		if h := ep.Hints; h != nil {
			for _, z := range h.ForZones {
				if z.Name != "" {
					se.ZoneHints = append(se.ZoneHints, z.Name)
				}
			}
			for _, n := range h.ForNodes {
				if n.Name != "" {
					se.NodeHints = append(se.NodeHints, n.Name)
				}
			}
		}
		out.Endpoints = append(out.Endpoints, se)
	}
	return out
}

// ConvertNode returns the model view of node: its name, its
// topology.kubernetes.io/zone label, its InternalIP then ExternalIP addresses
// (unparsable and repeated ones dropped) and whether its Ready condition is
// True.
func ConvertNode(logger klog.Logger, node *v1.Node) model.Node {
	if node == nil {
		return model.Node{}
	}
	out := model.Node{Name: node.Name, Zone: node.Labels[v1.LabelTopologyZone]}
	seen := map[netip.Addr]bool{}
	for _, typ := range [...]v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != typ {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				logger.V(2).Info("Dropping invalid node address", "node", klog.KObj(node), "type", a.Type, "address", a.Address)
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
	return out
}

// ToBeDeletedTaint is the cluster autoscaler's taint on a node it is about
// to remove.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// portNumber converts an API port number, reporting whether it is a usable
// port (1-65535).
func portNumber(n int32) (uint16, bool) {
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// protocol applies the API's default protocol, TCP, to an empty one. Other
// values are kept as given; the model skips protocols it does not program.
func protocol(p v1.Protocol) model.Protocol {
	if p == "" {
		return model.TCP
	}
	return model.Protocol(p)
}
