package model

// The traffic-policy decisions every mode makes the same way, decided
// here once; renderers only spell them (kube-proxy's iptables proxier is
// the reference: its hasEndpoints, hasExternalEndpoints, the EXT chain's
// short circuit and masquerade). ClusterNoEndpoints and ClusterDrops (in
// topology.go) are the ClusterIP's half.

// Serves reports whether some node has an endpoint of family f that could
// take a connection (ready, or serving and terminating). Without one,
// every destination of the port refuses new connections; with one, a
// destination whose traffic policy leaves this node nothing drops them,
// so clients retry instead of believing the Service is gone.
func (s *ServicePort) Serves(f IPFamily) bool {
	for _, e := range s.Endpoints {
		if FamilyOf(e.IP) == f && (e.Ready || e.Serving && e.Terminating) {
			return true
		}
	}
	return false
}

// ExternalNoEndpoints says what NodePort, external-IP and load-balancer
// traffic of family f from outside the node does when ExternalEndpoints
// has none of that family: drop while some node serves the port
// (externalTrafficPolicy Local on a node without a local endpoint, with
// any internalTrafficPolicy), otherwise reject.
func (s *ServicePort) ExternalNoEndpoints(f IPFamily) NoEndpointAction {
	if s.Serves(f) {
		return Drop
	}
	return Reject
}

// ExternalDrops reports whether new external connections of family f from
// outside the node are dropped: no ExternalEndpoints of f here, and the
// decision is Drop.
func (s *ServicePort) ExternalDrops(f IPFamily) bool {
	return s.HasExternal() && !hasFamily(s.ExternalEndpoints, f) && s.ExternalNoEndpoints(f) == Drop
}

// ExternalRefuses reports whether new external connections of family f
// are refused from every source: no node serves the port at all. (Pods
// and the node itself are then refused too; see ShortCircuits.)
func (s *ServicePort) ExternalRefuses(f IPFamily) bool {
	return s.HasExternal() && !s.Serves(f)
}

// ShortCircuits reports whether traffic of family f that this node's Pods
// (sources in the cluster CIDR) or the node itself send to the port's
// NodePort or external addresses skips the external policy and goes to
// SelectShortCircuitEndpoints, as if it had gone out to a load balancer
// and come back in: with externalTrafficPolicy Local, while some node
// serves the port. The node's own such traffic is masqueraded (its source
// is an address the endpoint would answer directly); the Pods' is not.
func (s *ServicePort) ShortCircuits(f IPFamily) bool {
	return s.ExternalLocal && s.HasExternal() && s.Serves(f)
}

// MasqueradesExternal reports whether external traffic from outside the
// node is masqueraded: under externalTrafficPolicy Cluster, so the reply
// comes back through this node; under Local the client's address is kept
// (only the short-circuited traffic of the node itself is masqueraded).
func (s *ServicePort) MasqueradesExternal() bool { return !s.ExternalLocal }

// SelectShortCircuitEndpoints returns the endpoints short-circuited traffic
// (see ShortCircuits) may use: the cluster-wide choice for node, which
// internalTrafficPolicy does not narrow (kube-proxy sends it to its
// cluster policy chain). It is ClusterEndpoints itself unless
// internalTrafficPolicy is Local; nil when the port does not short-circuit.
func SelectShortCircuitEndpoints(sp *ServicePort, node Node) []Endpoint {
	if !sp.ExternalLocal || !sp.HasExternal() {
		return nil
	}
	if !sp.InternalLocal {
		return sp.ClusterEndpoints
	}
	return selectEndpoints(sp, node, false)
}

func hasFamily(eps []Endpoint, f IPFamily) bool {
	for _, e := range eps {
		if FamilyOf(e.IP) == f {
			return true
		}
	}
	return false
}
