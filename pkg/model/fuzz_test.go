package model

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// fuzzBytes hands out the fuzzer's bytes, then zeros.
type fuzzBytes []byte

func (b *fuzzBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	v := (*b)[0]
	*b = (*b)[1:]
	return v
}

func (b *fuzzBytes) pick(n int) int { return int(b.next()) % n }

// The address pool is small so that Services collide often; it holds a
// zoned address and the unspecified ones, which must never reach a port.
var fuzzAddrs = []netip.Addr{
	addr("10.96.0.1"), addr("10.96.0.2"), addr("10.96.0.3"), addr("192.0.2.1"),
	addr("fd00:96::1"), addr("fd00:96::2"), addr("2001:db8::1"),
	addr("fd00:96::1%eth0"), addr("0.0.0.0"), addr("::"), addr("::ffff:10.96.0.1"),
}

func (b *fuzzBytes) addrs(max int) []netip.Addr {
	out := make([]netip.Addr, b.pick(max+1))
	for i := range out {
		out[i] = fuzzAddrs[b.pick(len(fuzzAddrs))]
	}
	return out
}

// fuzzSnapshot decodes several Services, each with a slice, from data.
func fuzzSnapshot(data []byte) Snapshot {
	b := fuzzBytes(data)
	var svcs []*Service
	var ess []*EndpointSlice
	for i := range 1 + b.pick(6) {
		name := string(rune('a' + i))
		s := &Service{Namespace: "ns", Name: name, Created: epoch.Add(time.Duration(b.pick(3)) * time.Minute),
			ClusterIPs: b.addrs(2), ExternalIPs: b.addrs(2), LoadBalancerIPs: b.addrs(2),
			ExternalLocal: b.next()&1 != 0, InternalLocal: b.next()&1 != 0}
		for range b.pick(3) {
			s.Ports = append(s.Ports, ServicePortSpec{
				Name:     string(rune('p' + b.pick(2))),
				Protocol: []Protocol{TCP, UDP, SCTP, "ICMP", ""}[b.pick(5)],
				Port:     []uint16{80, 443, 0}[b.pick(3)],
				NodePort: []uint16{0, 30000, 30001}[b.pick(3)],
			})
		}
		svcs = append(svcs, s)
		es := &EndpointSlice{Namespace: "ns", Name: name + "-1", ServiceName: []string{name, "a"}[b.pick(2)],
			Family: []IPFamily{IPv4, IPv6}[b.pick(2)]}
		for _, p := range s.Ports {
			es.Ports = append(es.Ports, SlicePort{Name: p.Name, Protocol: p.Protocol, Port: 8080})
		}
		for range b.pick(4) {
			flags := b.next()
			se := SliceEndpoint{Addresses: b.addrs(2),
				Ready: flags&1 != 0, Serving: flags&2 != 0, Terminating: flags&4 != 0, NodeName: []string{"n1", "n2"}[flags>>3&1]}
			if flags&16 != 0 { // unsorted, repeated hints, as a careless source could give them
				se.Hints = &Hints{Zones: []string{"z2", "z1", "z2"}[b.pick(3):], Nodes: []string{"n2", "n1"}[b.pick(2):]}
			}
			es.Endpoints = append(es.Endpoints, se)
		}
		ess = append(ess, es)
	}
	return snapshot(svcs, ess...)
}

// FuzzBuild feeds Build several Services that collide on addresses and
// ports: it must never panic, must be deterministic, and what it returns
// must keep its invariants, above all that no two service ports claim one
// destination.
func FuzzBuild(f *testing.F) {
	f.Add([]byte{1, 0, 1, 0, 1, 3, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 3, 0, 0, 0, 1, 0, 0, 1})
	f.Add([]byte{5, 2, 2, 4, 7, 2, 3, 7, 1, 10, 1, 1, 2, 0, 1, 2, 1, 3, 1, 1, 0, 2, 2, 9, 1, 4, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		snap := fuzzSnapshot(data)
		st := Build(snap)
		claimed := map[Destination]ServicePortKey{}
		for k, sp := range st.Services {
			if k != sp.Key || !k.Protocol.Valid() || sp.Port == 0 || len(sp.ClusterIPs) == 0 {
				t.Fatalf("invalid service port %v", sp)
			}
			for _, c := range claims(sp) {
				if !usable(c.dest.Addr.Addr()) && c.kind != NodePortClaim {
					t.Fatalf("%v claims unusable address %v", k, c.dest)
				}
				if other, dup := claimed[c.dest]; dup {
					t.Fatalf("%v and %v both claim %v %v", other, k, c.kind, c.dest)
				}
				claimed[c.dest] = k
			}
			checkEndpoints(t, sp)
		}
		for _, c := range st.Conflicts {
			if claimed[c.Destination] != c.Winner {
				t.Fatalf("conflict %v: the destination is held by %v", c, claimed[c.Destination])
			}
		}
		sameState(t, "a second Build", st, Build(snap))
	})
}

// FuzzUpdate checks the incremental Builder against Build: a Builder at
// one snapshot, updated with what differs in a second, must hold exactly
// what Build makes of the second, and name every port that changed.
func FuzzUpdate(f *testing.F) {
	f.Add([]byte{1, 0, 1, 0, 1, 3, 0, 0, 0, 1, 0, 0, 1}, []byte{1, 0, 1, 0, 1, 3, 0, 0, 0, 1, 0, 0, 2})
	f.Add([]byte{5, 2, 2, 4, 7, 2, 3, 7, 1, 10, 1, 1, 2, 0}, []byte{3, 1, 2, 4, 7, 2, 3, 7, 1, 10, 1, 1, 2, 0, 1})
	f.Fuzz(func(t *testing.T, first, second []byte) {
		a, b := fuzzSnapshot(first), fuzzSnapshot(second)
		var builder Builder
		before := builder.Build(a)
		ch := Changes{Services: map[NamespacedName]*Service{}, Slices: map[NamespacedName]*EndpointSlice{}}
		diffInto(ch.Services, a.Services, b.Services)
		diffInto(ch.Slices, a.Slices, b.Slices)
		if len(first) > 0 && first[0]&8 != 0 { // sometimes the node changes too
			b.Node = Node{Name: "n2", Zone: "z"}
			ch.Node = &b.Node
		}
		after, changed := builder.Update(ch)
		want := Build(b)
		sameState(t, "an updated Builder", want, after)
		for _, k := range Compute(before, want).Changed() {
			if !slices.Contains(changed, k) {
				t.Fatalf("%v changed but Update did not name it (named %v)", k, changed)
			}
		}
	})
}

// sameState fails the test unless got programs what want does and has the
// same conflicts.
func sameState(t *testing.T, what string, want, got *State) {
	t.Helper()
	if d := Compute(want, got); !d.Empty() {
		t.Fatalf("%s differs: %+v", what, d)
	}
	if !slices.Equal(want.Conflicts, got.Conflicts) {
		t.Fatalf("%s has conflicts %v, want %v", what, got.Conflicts, want.Conflicts)
	}
}

func checkEndpoints(t *testing.T, sp *ServicePort) {
	t.Helper()
	seen := map[netip.AddrPort]bool{}
	for _, e := range sp.Endpoints {
		if seen[e.AddrPort()] || !usable(e.IP) {
			t.Fatalf("%v: duplicate or unusable endpoint %v", sp.Key, e)
		}
		seen[e.AddrPort()] = true
	}
	for _, e := range sp.Endpoints {
		if h := e.Hints; h != nil && (!sortedSet(h.Zones) || !sortedSet(h.Nodes)) {
			t.Fatalf("%v: hints %+v are not sorted sets", sp.Key, *h)
		}
	}
	for _, e := range sp.ClusterEndpoints {
		if !seen[e.AddrPort()] {
			t.Fatalf("%v: usable endpoint %v is not an endpoint", sp.Key, e)
		}
		if !e.Ready && !(e.Serving && e.Terminating) {
			t.Fatalf("%v: unusable endpoint %+v selected", sp.Key, e)
		}
	}
	if !sp.HasExternal() && len(sp.ExternalEndpoints) > 0 {
		t.Fatalf("%v: external endpoints without a NodePort or external address", sp.Key)
	}
}
