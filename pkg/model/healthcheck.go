package model

import "net/netip"

// HealthCheck is what the node reports on one Service's
// healthCheckNodePort: load balancers send traffic only to nodes that
// answer 200, and with externalTrafficPolicy Local that means nodes with an
// endpoint of their own.
type HealthCheck struct {
	Port           uint16
	LocalEndpoints int
}

// HealthChecks returns the health check of every Service that has one. Its
// LocalEndpoints counts the ready endpoints on this node, each address and
// port once across all the Service's ports, as kube-proxy counts them.
func (s *State) HealthChecks() map[NamespacedName]HealthCheck {
	out := map[NamespacedName]HealthCheck{}
	seen := map[NamespacedName]map[netip.AddrPort]bool{}
	for _, sp := range s.Services {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		name := sp.Key.Service()
		hc := out[name]
		hc.Port = sp.HealthCheckNodePort
		if seen[name] == nil {
			seen[name] = map[netip.AddrPort]bool{}
		}
		for _, e := range sp.Endpoints {
			if e.Ready && e.NodeName == s.Node.Name && !seen[name][e.AddrPort()] {
				seen[name][e.AddrPort()] = true
				hc.LocalEndpoints++
			}
		}
		out[name] = hc
	}
	return out
}
