package model

import (
	"net/netip"
	"slices"
	"testing"
)

func TestExternalPolicyDecisions(t *testing.T) {
	node := Node{Name: "node1"}
	remote := Endpoint{IP: netip.MustParseAddr("10.244.2.5"), Port: 80, Ready: true, Serving: true, NodeName: "node2"}
	local := Endpoint{IP: netip.MustParseAddr("10.244.1.5"), Port: 80, Ready: true, Serving: true, NodeName: "node1"}
	notReady := Endpoint{IP: netip.MustParseAddr("10.244.2.6"), Port: 80, NodeName: "node2"}
	v6 := Endpoint{IP: netip.MustParseAddr("fd00::5"), Port: 80, Ready: true, Serving: true, NodeName: "node2"}
	build := func(sp ServicePort) *ServicePort {
		sp.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.1")}
		sp.ClusterEndpoints = SelectEndpoints(&sp, node)
		sp.ExternalEndpoints = SelectExternalEndpoints(&sp, node)
		return &sp
	}
	tests := []struct {
		name                          string
		sp                            *ServicePort
		drops, refuses, shortCircuits bool
		shortCircuitTo                []Endpoint
	}{
		{"Cluster policy with endpoints elsewhere serves everyone",
			build(ServicePort{NodePort: 30000, Endpoints: []Endpoint{remote}}), false, false, false, nil},
		{"no endpoint anywhere refuses from every source",
			build(ServicePort{NodePort: 30000, ExternalLocal: true, Endpoints: []Endpoint{notReady}}), false, true, false, nil},
		{"Local policy without a local endpoint drops outsiders and short-circuits Pods to the Service",
			build(ServicePort{NodePort: 30000, ExternalLocal: true, Endpoints: []Endpoint{remote}}), true, false, true, []Endpoint{remote}},
		{"Local policy with a local endpoint serves outsiders from it; Pods still get the whole Service",
			build(ServicePort{NodePort: 30000, ExternalLocal: true, Endpoints: []Endpoint{local, remote}}), false, false, true, []Endpoint{local, remote}},
		{"both policies Local without a local endpoint: outsiders dropped, Pods short-circuited to other nodes (kube-proxy's cluster policy chain)",
			build(ServicePort{NodePort: 30000, ExternalLocal: true, InternalLocal: true, Endpoints: []Endpoint{remote}}), true, false, true, []Endpoint{remote}},
		{"the other family's endpoints do not serve this one",
			build(ServicePort{NodePort: 30000, ExternalLocal: true, Endpoints: []Endpoint{v6}}), false, true, false, nil},
		{"no NodePort and no external address: no external traffic at all",
			build(ServicePort{ExternalLocal: true, Endpoints: []Endpoint{remote}}), false, false, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := tt.sp
			if got := sp.ExternalDrops(IPv4); got != tt.drops {
				t.Errorf("ExternalDrops = %v, want %v", got, tt.drops)
			}
			if got := sp.ExternalRefuses(IPv4); got != tt.refuses {
				t.Errorf("ExternalRefuses = %v, want %v", got, tt.refuses)
			}
			if got := sp.ShortCircuits(IPv4); got != tt.shortCircuits {
				t.Errorf("ShortCircuits = %v, want %v", got, tt.shortCircuits)
			}
			if tt.shortCircuits {
				if got := EndpointsOf(SelectShortCircuitEndpoints(sp, node), IPv4); !slices.EqualFunc(got, tt.shortCircuitTo, Endpoint.Equal) {
					t.Errorf("SelectShortCircuitEndpoints = %v, want %v", got, tt.shortCircuitTo)
				}
			}
		})
	}
}
