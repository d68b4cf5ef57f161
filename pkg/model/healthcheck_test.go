package model

import (
	"net/netip"
	"slices"
	"testing"
)

func TestHealthChecksCountReadyLocalEndpointsOnce(t *testing.T) {
	svc := web("10.96.0.1")
	svc.ExternalLocal = true
	svc.HealthCheckNodePort = 32000
	svc.Ports = append(svc.Ports, ServicePortSpec{Name: "metrics", Protocol: TCP, Port: 9090})
	local := func(ip string, ready bool) SliceEndpoint {
		return SliceEndpoint{Addresses: []netip.Addr{addr(ip)}, Ready: ready, Serving: ready, NodeName: "n1"}
	}
	es := webSlice("web-1", IPv4, local("10.244.0.1", true), local("10.244.0.2", false), readyEP("10.244.1.1"))
	es.Ports = append(es.Ports, SlicePort{Name: "metrics", Protocol: TCP, Port: 9090})
	plain := &Service{Namespace: "ns", Name: "plain", ClusterIPs: []netip.Addr{addr("10.96.0.2")},
		Ports: []ServicePortSpec{{Protocol: TCP, Port: 80}}}

	got := Build(snapshot([]*Service{svc, plain}, es)).HealthChecks()
	want := map[NamespacedName]HealthCheck{{"ns", "web"}: {Port: 32000, LocalEndpoints: 2}}
	if len(got) != len(want) || got[NamespacedName{"ns", "web"}] != want[NamespacedName{"ns", "web"}] {
		t.Errorf("HealthChecks() = %v, want %v (one ready local address on two ports; not-ready and remote ones do not count)", got, want)
	}
}

func TestSourceRangesAreKeptPerFamily(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name   string
		ips    []string
		ranges []netip.Prefix
		want   []netip.Prefix
	}{
		{"ranges are masked, sorted and deduplicated", []string{"10.96.0.1"},
			[]netip.Prefix{p("192.0.2.7/24"), p("10.0.0.0/8"), p("192.0.2.0/24")}, []netip.Prefix{p("10.0.0.0/8"), p("192.0.2.0/24")}},
		{"a range of the other family is dropped", []string{"10.96.0.1"},
			[]netip.Prefix{p("2001:db8::/64"), p("10.0.0.0/8")}, []netip.Prefix{p("10.0.0.0/8")}},
		{"a zero-length range opens its family only", []string{"10.96.0.1", "fd00::1"},
			[]netip.Prefix{p("0.0.0.0/0"), p("10.0.0.0/8"), p("2001:db8::/64")}, []netip.Prefix{p("2001:db8::/64")}},
		{"a range that admits the node admits the load-balancer IP as a source too", []string{"10.96.0.1"},
			[]netip.Prefix{p("192.168.0.0/16")}, []netip.Prefix{p("192.168.0.0/16"), p("198.51.100.1/32")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := web(tt.ips...)
			svc.LoadBalancerSourceRanges = tt.ranges
			svc.LoadBalancerIPs = []netip.Addr{addr("198.51.100.1")}
			snap := snapshot([]*Service{svc})
			snap.Node.IPs = []netip.Addr{addr("192.168.0.7")}
			sp := Build(snap).Services[httpKey]
			if sp == nil {
				t.Fatal("no service port")
			}
			if !slices.Equal(sp.SourceRanges, tt.want) {
				t.Errorf("SourceRanges = %v, want %v", sp.SourceRanges, tt.want)
			}
		})
	}
}
