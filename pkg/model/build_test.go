package model

import (
	"net/netip"
	"slices"
	"testing"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func readyEP(ip string) SliceEndpoint {
	return SliceEndpoint{Addresses: []netip.Addr{addr(ip)}, Ready: true, Serving: true, NodeName: "n2"}
}

func snapshot(svcs []*Service, slices ...*EndpointSlice) Snapshot {
	s := Snapshot{Node: Node{Name: "n1"}, Services: map[NamespacedName]*Service{}, Slices: map[NamespacedName]*EndpointSlice{}}
	for _, v := range svcs {
		s.Services[NamespacedName{v.Namespace, v.Name}] = v
	}
	for _, v := range slices {
		s.Slices[NamespacedName{v.Namespace, v.Name}] = v
	}
	return s
}

func web(ips ...string) *Service {
	s := &Service{Namespace: "ns", Name: "web", Ports: []ServicePortSpec{{Name: "http", Protocol: TCP, Port: 80}}}
	for _, ip := range ips {
		s.ClusterIPs = append(s.ClusterIPs, addr(ip))
	}
	return s
}

func webSlice(name string, fam IPFamily, eps ...SliceEndpoint) *EndpointSlice {
	return &EndpointSlice{Namespace: "ns", Name: name, ServiceName: "web", Family: fam,
		Ports: []SlicePort{{Name: "http", Protocol: TCP, Port: 8080}}, Endpoints: eps}
}

var httpKey = ServicePortKey{Namespace: "ns", Name: "web", Port: "http", Protocol: TCP}

func endpointsOf(st *State) []string {
	sp := st.Services[httpKey]
	if sp == nil {
		return nil
	}
	var out []string
	for _, e := range sp.ClusterEndpoints {
		out = append(out, e.String())
	}
	return out
}

func TestBuild(t *testing.T) {
	tests := []struct {
		name string
		snap Snapshot
		want []string // usable endpoints of ns/web:http; nil with noPort means no service port at all
		none bool
	}{
		{name: "a Service with one slice of ready endpoints uses them all",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("10.0.0.2"), readyEP("10.0.0.1"))),
			want: []string{"10.0.0.1:8080", "10.0.0.2:8080"}},
		{name: "several slices of one Service are merged",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("10.0.0.1")), webSlice("b", IPv4, readyEP("10.0.0.2"))),
			want: []string{"10.0.0.1:8080", "10.0.0.2:8080"}},
		{name: "an endpoint in two slices counts once",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("10.0.0.1")), webSlice("b", IPv4, readyEP("10.0.0.1"))),
			want: []string{"10.0.0.1:8080"}},
		{name: "a duplicate that is ready wins over a not-ready copy",
			snap: snapshot([]*Service{web("10.96.0.10")},
				webSlice("a", IPv4, SliceEndpoint{Addresses: []netip.Addr{addr("10.0.0.1")}}), webSlice("b", IPv4, readyEP("10.0.0.1"))),
			want: []string{"10.0.0.1:8080"}},
		{name: "endpoints of the wrong IP family are ignored",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv6, readyEP("fd00::1")), webSlice("b", IPv4, readyEP("10.0.0.1"))),
			want: []string{"10.0.0.1:8080"}},
		{name: "an address that does not match its slice's family is ignored",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("fd00::1"), readyEP("10.0.0.1"))),
			want: []string{"10.0.0.1:8080"}},
		{name: "a dual-stack Service keeps endpoints of both families",
			snap: snapshot([]*Service{web("10.96.0.10", "fd00:96::10")}, webSlice("a", IPv6, readyEP("fd00::1")), webSlice("b", IPv4, readyEP("10.0.0.1"))),
			want: []string{"10.0.0.1:8080", "[fd00::1]:8080"}},
		{name: "a slice whose port name does not match contributes nothing",
			snap: snapshot([]*Service{web("10.96.0.10")}, &EndpointSlice{Namespace: "ns", Name: "a", ServiceName: "web", Family: IPv4,
				Ports: []SlicePort{{Name: "metrics", Protocol: TCP, Port: 9090}}, Endpoints: []SliceEndpoint{readyEP("10.0.0.1")}}),
			want: nil},
		{name: "a slice port with another protocol contributes nothing",
			snap: snapshot([]*Service{web("10.96.0.10")}, &EndpointSlice{Namespace: "ns", Name: "a", ServiceName: "web", Family: IPv4,
				Ports: []SlicePort{{Name: "http", Protocol: UDP, Port: 8080}}, Endpoints: []SliceEndpoint{readyEP("10.0.0.1")}}),
			want: nil},
		{name: "an endpoint without addresses is skipped",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, SliceEndpoint{Ready: true}, readyEP("10.0.0.1"))),
			want: []string{"10.0.0.1:8080"}},
		{name: "a slice of another Service is not used",
			snap: snapshot([]*Service{web("10.96.0.10")}, &EndpointSlice{Namespace: "ns", Name: "x", ServiceName: "other", Family: IPv4,
				Ports: []SlicePort{{Name: "http", Protocol: TCP, Port: 8080}}, Endpoints: []SliceEndpoint{readyEP("10.0.0.1")}}),
			want: nil},
		{name: "a Service without a ClusterIP gets no service port",
			snap: snapshot([]*Service{web()}, webSlice("a", IPv4, readyEP("10.0.0.1"))), none: true},
		{name: "only ready endpoints are used when some are ready",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("10.0.0.1"),
				SliceEndpoint{Addresses: []netip.Addr{addr("10.0.0.2")}, Serving: true, Terminating: true})),
			want: []string{"10.0.0.1:8080"}},
		{name: "serving terminating endpoints are used when none is ready",
			snap: snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4,
				SliceEndpoint{Addresses: []netip.Addr{addr("10.0.0.2")}, Serving: true, Terminating: true},
				SliceEndpoint{Addresses: []netip.Addr{addr("10.0.0.3")}, Terminating: true})),
			want: []string{"10.0.0.2:8080"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Build(tt.snap)
			if tt.none {
				if len(st.Services) != 0 {
					t.Fatalf("service ports = %v, want none", st.Sorted())
				}
				return
			}
			if got := endpointsOf(st); !slices.Equal(got, tt.want) {
				t.Errorf("endpoints = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSelectEndpointsPolicies(t *testing.T) {
	local := SliceEndpoint{Addresses: []netip.Addr{addr("10.0.0.1")}, Ready: true, Serving: true, NodeName: "n1", Hints: &Hints{Zones: []string{"a"}}}
	remote := SliceEndpoint{Addresses: []netip.Addr{addr("10.0.0.2")}, Ready: true, Serving: true, NodeName: "n2", Hints: &Hints{Zones: []string{"b"}}}
	tests := []struct {
		name string
		svc  func(*Service)
		node Node
		eps  []SliceEndpoint
		want []string
	}{
		{name: "internalTrafficPolicy Local keeps only this node's endpoints", svc: func(s *Service) { s.InternalLocal = true },
			node: Node{Name: "n1"}, eps: []SliceEndpoint{local, remote}, want: []string{"10.0.0.1:8080"}},
		{name: "internalTrafficPolicy Local with no local endpoint rejects rather than going remote", svc: func(s *Service) { s.InternalLocal = true },
			node: Node{Name: "n3"}, eps: []SliceEndpoint{local, remote}, want: nil},
		{name: "zone hints narrow the choice to the node's zone", node: Node{Name: "n3", Zone: "b"},
			eps: []SliceEndpoint{local, remote}, want: []string{"10.0.0.2:8080"}},
		{name: "zone hints for no endpoint in this zone are ignored", node: Node{Name: "n3", Zone: "c"},
			eps: []SliceEndpoint{local, remote}, want: []string{"10.0.0.1:8080", "10.0.0.2:8080"}},
		{name: "hints are ignored unless every endpoint has them", node: Node{Name: "n3", Zone: "b"},
			eps: []SliceEndpoint{local, {Addresses: []netip.Addr{addr("10.0.0.3")}, Ready: true}}, want: []string{"10.0.0.1:8080", "10.0.0.3:8080"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := web("10.96.0.10")
			if tt.svc != nil {
				tt.svc(s)
			}
			snap := snapshot([]*Service{s}, webSlice("a", IPv4, tt.eps...))
			snap.Node = tt.node
			if got := endpointsOf(Build(snap)); !slices.Equal(got, tt.want) {
				t.Errorf("endpoints = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestComputeDiff(t *testing.T) {
	before := Build(snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("10.0.0.1"), readyEP("10.0.0.2"))))
	vip := Destination{Protocol: TCP, Addr: netip.MustParseAddrPort("10.96.0.10:80")}
	t.Run("identical states differ in nothing", func(t *testing.T) {
		again := Build(snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("10.0.0.2"), readyEP("10.0.0.1"))))
		if d := Compute(before, again); !d.Empty() || len(d.Retired) != 0 {
			t.Errorf("diff = %+v, want empty", d)
		}
	})
	t.Run("a removed endpoint is an update that retires nothing", func(t *testing.T) {
		after := Build(snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, readyEP("10.0.0.1"))))
		if d := Compute(before, after); !slices.Equal(d.Updated, []ServicePortKey{httpKey}) || len(d.Retired) != 0 {
			t.Errorf("diff = %+v", d)
		}
	})
	t.Run("a deleted Service is removed and retires its ClusterIP", func(t *testing.T) {
		d := Compute(before, Build(snapshot(nil)))
		if !slices.Equal(d.Removed, []ServicePortKey{httpKey}) || !slices.Equal(d.Retired, []Destination{vip}) {
			t.Errorf("diff = %+v", d)
		}
	})
	t.Run("a new ClusterIP retires the old one", func(t *testing.T) {
		d := Compute(before, Build(snapshot([]*Service{web("10.96.0.11")}, webSlice("a", IPv4, readyEP("10.0.0.1"), readyEP("10.0.0.2")))))
		if !slices.Equal(d.Updated, []ServicePortKey{httpKey}) || !slices.Equal(d.Retired, []Destination{vip}) {
			t.Errorf("diff = %+v", d)
		}
	})
	t.Run("from nothing, every port is added and unsettled", func(t *testing.T) {
		d := Compute(nil, before)
		if !slices.Equal(d.Added, []ServicePortKey{httpKey}) || !slices.Equal(d.Changed(), []ServicePortKey{httpKey}) ||
			!slices.Equal(d.Unsettled, []ServicePortKey{httpKey}) {
			t.Errorf("diff = %+v", d)
		}
	})
	unsettled := []struct {
		name string
		eps  []SliceEndpoint
		want bool
	}{
		{"an endpoint more unsettles nothing", []SliceEndpoint{readyEP("10.0.0.1"), readyEP("10.0.0.2"), readyEP("10.0.0.3")}, false},
		{"an endpoint fewer unsettles the port", []SliceEndpoint{readyEP("10.0.0.1")}, true},
		{"an endpoint that stops serving unsettles the port", []SliceEndpoint{readyEP("10.0.0.1"), {Addresses: []netip.Addr{addr("10.0.0.2")}}}, true},
		{"a terminating endpoint that still serves unsettles nothing", []SliceEndpoint{readyEP("10.0.0.1"),
			{Addresses: []netip.Addr{addr("10.0.0.2")}, Serving: true, Terminating: true}}, false},
	}
	for _, tc := range unsettled {
		t.Run(tc.name, func(t *testing.T) {
			d := Compute(before, Build(snapshot([]*Service{web("10.96.0.10")}, webSlice("a", IPv4, tc.eps...))))
			if got := slices.Contains(d.Unsettled, httpKey); got != tc.want || !slices.Equal(d.Updated, []ServicePortKey{httpKey}) {
				t.Errorf("unsettled = %v, want %v (diff %+v)", got, tc.want, d)
			}
		})
	}
	t.Run("the first endpoint unsettles the port", func(t *testing.T) {
		empty := Build(snapshot([]*Service{web("10.96.0.10")}))
		if d := Compute(empty, before); !slices.Equal(d.Unsettled, []ServicePortKey{httpKey}) {
			t.Errorf("diff = %+v", d)
		}
	})
}

func TestBuilderReusesUnchangedServicesAndRebuildsChangedOnes(t *testing.T) {
	other := &Service{Namespace: "ns", Name: "db", ClusterIPs: []netip.Addr{addr("10.96.0.20")}, Ports: []ServicePortSpec{{Name: "sql", Protocol: TCP, Port: 5432}}}
	otherSlice := &EndpointSlice{Namespace: "ns", Name: "db-1", ServiceName: "db", Family: IPv4,
		Ports: []SlicePort{{Name: "sql", Protocol: TCP, Port: 5432}}, Endpoints: []SliceEndpoint{readyEP("10.0.1.1")}}
	snap := snapshot([]*Service{web("10.96.0.10"), other}, webSlice("a", IPv4, readyEP("10.0.0.1")), otherSlice)
	var b Builder
	first := b.Build(snap)
	dbKey := ServicePortKey{Namespace: "ns", Name: "db", Port: "sql", Protocol: TCP}

	snap.Slices[NamespacedName{"ns", "a"}] = webSlice("a", IPv4, readyEP("10.0.0.1"), readyEP("10.0.0.2"))
	second := b.Build(snap)
	if second.Services[dbKey] != first.Services[dbKey] {
		t.Error("an untouched Service was rebuilt")
	}
	if second.Services[httpKey] == first.Services[httpKey] {
		t.Error("a Service whose slice changed was not rebuilt")
	}
	if got := endpointsOf(second); !slices.Equal(got, []string{"10.0.0.1:8080", "10.0.0.2:8080"}) {
		t.Errorf("endpoints = %v", got)
	}
	if d := Compute(first, second); !slices.Equal(d.Updated, []ServicePortKey{httpKey}) || len(d.Added)+len(d.Removed) != 0 {
		t.Errorf("diff = %+v", d)
	}

	snap.Node = Node{Name: "n1", Zone: "z"}
	third := b.Build(snap)
	fresh := Build(snap)
	if d := Compute(fresh, third); !d.Empty() {
		t.Errorf("memoised build differs from a fresh one: %+v", d)
	}
}

func TestDestinationsCoverExternalIPsAndTheNodePortPerFamily(t *testing.T) {
	s := web("10.96.0.10")
	s.ClusterIPs = append(s.ClusterIPs, addr("fd00:10:96::10"))
	s.Ports[0].NodePort = 30080
	s.ExternalIPs = []netip.Addr{addr("192.0.2.10")}
	before := Build(snapshot([]*Service{s}, webSlice("a", IPv4, readyEP("10.0.0.1"))))
	var got []string
	for _, d := range before.Services[httpKey].Destinations() {
		got = append(got, string(d.Protocol)+" "+d.Addr.String())
	}
	want := []string{"TCP 10.96.0.10:80", "TCP [fd00:10:96::10]:80", "TCP 192.0.2.10:80", "TCP 0.0.0.0:30080", "TCP [::]:30080"}
	if !slices.Equal(got, want) {
		t.Errorf("destinations = %v, want %v", got, want)
	}
	s.Ports[0].NodePort = 30081
	d := Compute(before, Build(snapshot([]*Service{s}, webSlice("a", IPv4, readyEP("10.0.0.1")))))
	retired := []Destination{{TCP, netip.MustParseAddrPort("0.0.0.0:30080")}, {TCP, netip.MustParseAddrPort("[::]:30080")}}
	if !slices.Equal(d.Retired, retired) {
		t.Errorf("a moved NodePort retires %v, want %v", d.Retired, retired)
	}
}
