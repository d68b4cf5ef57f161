package model

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// svcAt is a one-port TCP Service "ns/name" created minutes after epoch.
func svcAt(name string, minutes int, clusterIPs ...string) *Service {
	s := &Service{Namespace: "ns", Name: name, Created: epoch.Add(time.Duration(minutes) * time.Minute),
		Ports: []ServicePortSpec{{Name: "p", Protocol: TCP, Port: 80}}}
	for _, ip := range clusterIPs {
		s.ClusterIPs = append(s.ClusterIPs, addr(ip))
	}
	return s
}

func key(name string) ServicePortKey {
	return ServicePortKey{Namespace: "ns", Name: name, Port: "p", Protocol: TCP}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, addr(s))
	}
	return out
}

// portView is what a test checks of one service port; absent ports are
// the zero value with Absent set.
type portView struct {
	Absent      bool
	ClusterIPs  []netip.Addr
	ExternalIPs []netip.Addr
	NodePort    uint16
}

func view(st *State, k ServicePortKey) portView {
	sp := st.Services[k]
	if sp == nil {
		return portView{Absent: true}
	}
	return portView{ClusterIPs: sp.ClusterIPs, ExternalIPs: sp.ExternalIPs, NodePort: sp.NodePort}
}

func (v portView) equal(o portView) bool {
	return v.Absent == o.Absent && slices.Equal(v.ClusterIPs, o.ClusterIPs) &&
		slices.Equal(v.ExternalIPs, o.ExternalIPs) && v.NodePort == o.NodePort
}

func TestConflictsAreSettledByOneRule(t *testing.T) {
	withExt := func(s *Service, ips ...string) *Service { s.ExternalIPs = addrs(ips...); return s }
	withLB := func(s *Service, ips ...string) *Service { s.LoadBalancerIPs = addrs(ips...); return s }
	withNodePort := func(s *Service, np uint16) *Service { s.Ports[0].NodePort = np; return s }
	tests := []struct {
		name      string
		svcs      []*Service
		want      map[string]portView
		conflicts []string
	}{
		{name: "two Services with the same external IP and port: the older keeps it, the newer keeps its ClusterIP",
			svcs: []*Service{withExt(svcAt("new", 5, "10.96.0.2"), "192.0.2.1"), withExt(svcAt("old", 1, "10.96.0.1"), "192.0.2.1")},
			want: map[string]portView{
				"old": {ClusterIPs: addrs("10.96.0.1"), ExternalIPs: addrs("192.0.2.1")},
				"new": {ClusterIPs: addrs("10.96.0.2")}},
			conflicts: []string{"ns/new:p/TCP loses externalIP 192.0.2.1:80/TCP to ns/old:p/TCP (externalIP)"}},
		{name: "between Services created in the same second the first by namespace and name wins",
			svcs: []*Service{withExt(svcAt("b", 1, "10.96.0.2"), "192.0.2.1"), withExt(svcAt("a", 1, "10.96.0.1"), "192.0.2.1")},
			want: map[string]portView{
				"a": {ClusterIPs: addrs("10.96.0.1"), ExternalIPs: addrs("192.0.2.1")},
				"b": {ClusterIPs: addrs("10.96.0.2")}},
			conflicts: []string{"ns/b:p/TCP loses externalIP 192.0.2.1:80/TCP to ns/a:p/TCP (externalIP)"}},
		{name: "an uncontested external IP of the loser keeps working",
			svcs: []*Service{withExt(svcAt("new", 5, "10.96.0.2"), "192.0.2.1", "192.0.2.2"), withExt(svcAt("old", 1, "10.96.0.1"), "192.0.2.1")},
			want: map[string]portView{
				"old": {ClusterIPs: addrs("10.96.0.1"), ExternalIPs: addrs("192.0.2.1")},
				"new": {ClusterIPs: addrs("10.96.0.2"), ExternalIPs: addrs("192.0.2.2")}},
			conflicts: []string{"ns/new:p/TCP loses externalIP 192.0.2.1:80/TCP to ns/old:p/TCP (externalIP)"}},
		{name: "the same external IP on another port is no conflict",
			svcs: []*Service{withExt(svcAt("new", 5, "10.96.0.2"), "192.0.2.1"), func() *Service {
				s := withExt(svcAt("old", 1, "10.96.0.1"), "192.0.2.1")
				s.Ports[0].Port = 443
				return s
			}()},
			want: map[string]portView{
				"new": {ClusterIPs: addrs("10.96.0.2"), ExternalIPs: addrs("192.0.2.1")}}},
		{name: "an external IP equal to another Service's ClusterIP and port loses, however old",
			svcs: []*Service{svcAt("young", 9, "10.96.0.1"), withExt(svcAt("ancient", 0, "10.96.0.2"), "10.96.0.1")},
			want: map[string]portView{
				"young":   {ClusterIPs: addrs("10.96.0.1")},
				"ancient": {ClusterIPs: addrs("10.96.0.2")}},
			conflicts: []string{"ns/ancient:p/TCP loses externalIP 10.96.0.1:80/TCP to ns/young:p/TCP (clusterIP)"}},
		{name: "a load-balancer IP equal to another Service's ClusterIP loses too",
			svcs: []*Service{svcAt("young", 9, "10.96.0.1"), withLB(svcAt("lb", 0, "10.96.0.2"), "10.96.0.1")},
			want: map[string]portView{
				"young": {ClusterIPs: addrs("10.96.0.1")},
				"lb":    {ClusterIPs: addrs("10.96.0.2")}},
			conflicts: []string{"ns/lb:p/TCP loses loadBalancerIP 10.96.0.1:80/TCP to ns/young:p/TCP (clusterIP)"}},
		{name: "two LoadBalancers sharing an ingress IP and port: the older serves it",
			svcs: []*Service{withLB(svcAt("lb2", 2, "10.96.0.2"), "203.0.113.1"), withLB(svcAt("lb1", 1, "10.96.0.1"), "203.0.113.1")},
			want: map[string]portView{
				"lb1": {ClusterIPs: addrs("10.96.0.1"), ExternalIPs: addrs("203.0.113.1")},
				"lb2": {ClusterIPs: addrs("10.96.0.2")}},
			conflicts: []string{"ns/lb2:p/TCP loses loadBalancerIP 203.0.113.1:80/TCP to ns/lb1:p/TCP (loadBalancerIP)"}},
		{name: "a load-balancer IP beats an older Service's external IP",
			svcs: []*Service{withLB(svcAt("lb", 9, "10.96.0.2"), "203.0.113.1"), withExt(svcAt("ext", 1, "10.96.0.1"), "203.0.113.1")},
			want: map[string]portView{
				"lb":  {ClusterIPs: addrs("10.96.0.2"), ExternalIPs: addrs("203.0.113.1")},
				"ext": {ClusterIPs: addrs("10.96.0.1")}},
			conflicts: []string{"ns/ext:p/TCP loses externalIP 203.0.113.1:80/TCP to ns/lb:p/TCP (loadBalancerIP)"}},
		{name: "two Services with one NodePort: the newer loses the NodePort and keeps its ClusterIP",
			svcs: []*Service{withNodePort(svcAt("new", 5, "10.96.0.2"), 30080), withNodePort(svcAt("old", 1, "10.96.0.1"), 30080)},
			want: map[string]portView{
				"old": {ClusterIPs: addrs("10.96.0.1"), NodePort: 30080},
				"new": {ClusterIPs: addrs("10.96.0.2")}},
			conflicts: []string{"ns/new:p/TCP loses nodePort 30080/TCP to ns/old:p/TCP (nodePort)"}},
		{name: "one NodePort number in TCP and UDP is no conflict",
			svcs: []*Service{withNodePort(svcAt("new", 5, "10.96.0.2"), 30080), func() *Service {
				s := withNodePort(svcAt("old", 1, "10.96.0.1"), 30080)
				s.Ports[0].Protocol = UDP
				return s
			}()},
			want: map[string]portView{"new": {ClusterIPs: addrs("10.96.0.2"), NodePort: 30080}}},
		{name: "two Services with one ClusterIP and port: the newer's port is left out",
			svcs: []*Service{withNodePort(svcAt("new", 5, "10.96.0.1"), 30081), svcAt("old", 1, "10.96.0.1")},
			want: map[string]portView{
				"old": {ClusterIPs: addrs("10.96.0.1")},
				"new": {Absent: true}},
			conflicts: []string{"ns/new:p/TCP loses clusterIP 10.96.0.1:80/TCP to ns/old:p/TCP (clusterIP)"}},
		{name: "a dual-stack loser of its IPv4 ClusterIP keeps serving IPv6, without its IPv4 external IPs",
			svcs: []*Service{withExt(svcAt("new", 5, "10.96.0.1", "fd00:96::1"), "192.0.2.1", "2001:db8::1"), svcAt("old", 1, "10.96.0.1")},
			want: map[string]portView{
				"old": {ClusterIPs: addrs("10.96.0.1")},
				"new": {ClusterIPs: addrs("fd00:96::1"), ExternalIPs: addrs("2001:db8::1")}},
			conflicts: []string{"ns/new:p/TCP loses clusterIP 10.96.0.1:80/TCP to ns/old:p/TCP (clusterIP)"}},
		{name: "an external IP equal to the Service's own ClusterIP is left out",
			svcs:      []*Service{withExt(svcAt("self", 1, "10.96.0.1"), "10.96.0.1", "192.0.2.1")},
			want:      map[string]portView{"self": {ClusterIPs: addrs("10.96.0.1"), ExternalIPs: addrs("192.0.2.1")}},
			conflicts: []string{"ns/self:p/TCP loses externalIP 10.96.0.1:80/TCP to ns/self:p/TCP (clusterIP)"}},
		{name: "zone addresses never reach a service port",
			svcs: []*Service{withExt(svcAt("zoned", 1, "fd00:96::1%eth0", "fd00:96::2"), "2001:db8::1%eth0", "2001:db8::2")},
			want: map[string]portView{"zoned": {ClusterIPs: addrs("fd00:96::2"), ExternalIPs: addrs("2001:db8::2")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Build(snapshot(tt.svcs))
			for name, want := range tt.want {
				if got := view(st, key(name)); !got.equal(want) {
					t.Errorf("%s = %+v, want %+v", name, got, want)
				}
			}
			var got []string
			for _, c := range st.Conflicts {
				got = append(got, c.String())
			}
			if !slices.Equal(got, tt.conflicts) {
				t.Errorf("conflicts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.conflicts, "\n"))
			}
		})
	}
}

func TestTwoPortsOfOneServiceWithOneNumberKeepTheFirstByName(t *testing.T) {
	s := svcAt("web", 1, "10.96.0.1")
	s.Ports = []ServicePortSpec{{Name: "b", Protocol: TCP, Port: 80}, {Name: "a", Protocol: TCP, Port: 80}}
	st := Build(snapshot([]*Service{s}))
	a, b := ServicePortKey{"ns", "web", "a", TCP}, ServicePortKey{"ns", "web", "b", TCP}
	if st.Services[a] == nil || st.Services[b] != nil {
		t.Errorf("ports = %v, want only %v", st.Sorted(), a)
	}
	if len(st.Conflicts) != 1 || st.Conflicts[0].Loser != b {
		t.Errorf("conflicts = %v", st.Conflicts)
	}
}

func TestConflictResolutionDoesNotDependOnMapOrder(t *testing.T) {
	var svcs []*Service
	for i, name := range []string{"a", "b", "c", "d", "e", "f"} {
		s := svcAt(name, i%2, "10.96.0."+string(rune('1'+i)))
		s.ExternalIPs = addrs("192.0.2.1", "10.96.0.1")
		s.LoadBalancerIPs = addrs("10.96.0.3")
		s.Ports[0].NodePort = 30000 + uint16(i%3)
		svcs = append(svcs, s)
	}
	first := Build(snapshot(svcs))
	for range 20 {
		again := Build(snapshot(svcs))
		if d := Compute(first, again); !d.Empty() || !slices.Equal(first.Conflicts, again.Conflicts) {
			t.Fatalf("a second Build differs: %+v\n%v\n%v", d, first.Conflicts, again.Conflicts)
		}
	}
}
