package model

import "slices"

// Values of spec.trafficDistribution that change endpoint selection.
const (
	TrafficDistributionPreferClose    = "PreferClose"
	TrafficDistributionPreferSameZone = "PreferSameZone"
	TrafficDistributionPreferSameNode = "PreferSameNode"
)

// SelectEndpoints decides which endpoints ClusterIP traffic originating on
// node may use, the one rule every backend shares (kube-proxy's
// CategorizeEndpoints is the reference):
//
//   - ready endpoints are used; when none is ready, endpoints that are
//     serving and terminating are used instead, so a rolling update does not
//     drop connections while the new Pods start;
//   - internalTrafficPolicy Local restricts the choice to the node's own
//     endpoints, with the same ready-then-terminating fallback, and never
//     falls back to remote ones;
//   - topology hints (trafficDistribution, or the older hints annotation)
//     narrow the ready set to endpoints hinted for this node or its zone, but
//     only when every ready endpoint carries hints and at least one matches;
//     otherwise all ready endpoints are used.
//
// An empty result means the ClusterIP refuses new connections, or, with
// internalTrafficPolicy Local while other nodes have usable endpoints
// (see Usable), drops them, as kube-proxy does.
func SelectEndpoints(sp *ServicePort, node Node) []Endpoint {
	return selectEndpoints(sp, node, sp.InternalLocal)
}

// Usable reports whether any of eps could take a connection (ready, or
// serving and terminating): a port whose traffic policy leaves it none on
// this node drops the traffic instead of refusing it, so a client retries
// rather than believe the Service is gone.
func Usable(eps []Endpoint) bool {
	return slices.ContainsFunc(eps, func(e Endpoint) bool { return e.Ready || e.Serving && e.Terminating })
}

func selectEndpoints(sp *ServicePort, node Node, local bool) []Endpoint {
	candidates := sp.Endpoints
	if local {
		candidates = slices.DeleteFunc(slices.Clone(candidates), func(e Endpoint) bool { return e.NodeName != node.Name })
	}
	var ready, terminating []Endpoint
	for _, e := range candidates {
		switch {
		case e.Ready:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			terminating = append(terminating, e)
		}
	}
	if len(ready) == 0 {
		return terminating
	}
	if len(ready) == len(candidates) {
		ready = candidates // the usual case: share the backing array, State is read-only
	}
	if local {
		return ready
	}
	return applyHints(ready, node)
}

// SelectExternalEndpoints decides which endpoints NodePort and external-IP
// traffic arriving at node may use. With externalTrafficPolicy Cluster it
// is the cluster-wide choice (internalTrafficPolicy does not narrow
// external traffic); with Local it is the node's own endpoints (ready, else
// serving and terminating), so the client's address is preserved and a node
// without one drops the traffic rather than forward it.
func SelectExternalEndpoints(sp *ServicePort, node Node) []Endpoint {
	if !sp.HasExternal() {
		return nil
	}
	if !sp.ExternalLocal {
		if !sp.InternalLocal {
			return sp.ClusterEndpoints
		}
		return selectEndpoints(sp, node, false)
	}
	var ready, terminating []Endpoint
	for _, e := range sp.Endpoints {
		switch {
		case e.NodeName != node.Name:
		case e.Ready:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			terminating = append(terminating, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

func applyHints(ready []Endpoint, node Node) []Endpoint {
	byNode := filterHinted(ready, func(e Endpoint) []string { return e.Hints.nodes() }, node.Name)
	if byNode != nil {
		return byNode
	}
	if node.Zone == "" {
		return ready
	}
	if byZone := filterHinted(ready, func(e Endpoint) []string { return e.Hints.zones() }, node.Zone); byZone != nil {
		return byZone
	}
	return ready
}

// filterHinted returns the endpoints whose hints include want, or nil when
// some endpoint has no hints of that kind or none matches.
func filterHinted(eps []Endpoint, hints func(Endpoint) []string, want string) []Endpoint {
	if want == "" {
		return nil
	}
	var out []Endpoint
	for _, e := range eps {
		h := hints(e)
		if len(h) == 0 {
			return nil
		}
		if slices.Contains(h, want) {
			out = append(out, e)
		}
	}
	return out
}

// NoEndpointAction is what a node does with a new connection to a service
// port that has no endpoint this traffic may use.
type NoEndpointAction uint8

// The two answers, decided once here for every mode.
const (
	// Reject refuses the connection (ICMP port unreachable, seen by a TCP
	// client as "connection refused"): nothing serves the port at all.
	Reject NoEndpointAction = iota
	// Drop discards it silently: a traffic policy keeps this node from
	// endpoints that other nodes have, so the client should retry rather
	// than believe the Service is gone (kube-proxy's behaviour).
	Drop
)

// ClusterNoEndpoints says what ClusterIP traffic of family f does when
// ClusterEndpoints has none of that family: drop under
// internalTrafficPolicy Local while some node has a usable endpoint,
// otherwise reject.
func (s *ServicePort) ClusterNoEndpoints(f IPFamily) NoEndpointAction {
	if s.InternalLocal && Usable(EndpointsOf(s.Endpoints, f)) {
		return Drop
	}
	return Reject
}

// ClusterDrops reports whether new ClusterIP connections of family f are
// dropped: no usable endpoint of f here, and the decision is Drop.
func (s *ServicePort) ClusterDrops(f IPFamily) bool {
	return len(EndpointsOf(s.ClusterEndpoints, f)) == 0 && s.ClusterNoEndpoints(f) == Drop
}
