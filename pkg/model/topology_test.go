package model

import (
	"net/netip"
	"testing"
)

func TestClusterNoEndpointsDropsOnlyWhenAnotherNodeServes(t *testing.T) {
	remote := Endpoint{IP: netip.MustParseAddr("10.244.2.5"), Port: 80, Ready: true, NodeName: "other"}
	tests := []struct {
		name  string
		sp    ServicePort
		drops bool
	}{
		{"no endpoints anywhere: reject", ServicePort{InternalLocal: true}, false},
		{"Local, another node serves: drop", ServicePort{InternalLocal: true, Endpoints: []Endpoint{remote}}, true},
		{"Local, another node's endpoint not ready: reject", ServicePort{InternalLocal: true, Endpoints: []Endpoint{{IP: remote.IP, Port: 80, NodeName: "other"}}}, false},
		{"Cluster policy never drops", ServicePort{Endpoints: []Endpoint{remote}}, false},
		{"Local with a local endpoint: serve", ServicePort{InternalLocal: true, Endpoints: []Endpoint{remote}, ClusterEndpoints: []Endpoint{remote}}, false},
		{"Local, other family only: reject", ServicePort{InternalLocal: true, Endpoints: []Endpoint{{IP: netip.MustParseAddr("fd00::5"), Port: 80, Ready: true}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.sp.ClusterDrops(IPv4); got != tt.drops {
				t.Errorf("ClusterDrops(IPv4) = %v, want %v", got, tt.drops)
			}
		})
	}
}
