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

// HealthChecks returns the health check of every Service that has one.
func (s *State) HealthChecks() map[NamespacedName]HealthCheck {
	out := map[NamespacedName]HealthCheck{}
	for k := range s.Services {
		n := k.Service()
		if _, done := out[n]; done {
			continue
		}
		if hc, ok := s.HealthCheckOf(n); ok {
			out[n] = hc
		}
	}
	return out
}

// HealthCheckOf returns the health check of the Service n, if it has one.
// Its LocalEndpoints counts the ready endpoints on this node, each address
// and port once across all the Service's ports, as kube-proxy counts them.
func (s *State) HealthCheckOf(n NamespacedName) (HealthCheck, bool) {
	var hc HealthCheck
	seen := map[netip.AddrPort]bool{}
	for _, sp := range s.PortsOf(n) {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		hc.Port = sp.HealthCheckNodePort
		for _, e := range sp.Endpoints {
			if e.Ready && e.NodeName == s.Node.Name && !seen[e.AddrPort()] {
				seen[e.AddrPort()] = true
				hc.LocalEndpoints++
			}
		}
	}
	return hc, hc.Port != 0
}
