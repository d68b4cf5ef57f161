package model

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkStateCopy is what the daemon pays after each sync to hand its
// side consumers (explain, the connection-balance collector) a State the
// next Update does not change.
func BenchmarkStateCopy(b *testing.B) {
	for _, n := range []int{1000, 10000, 30000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			st := Build(benchSnapshot(n))
			b.ReportAllocs()
			for b.Loop() {
				if c := st.Copy(); len(c.Services) != n {
					b.Fatalf("%d service ports, want %d", len(c.Services), n)
				}
			}
		})
	}
}

// benchSnapshot is N Services × 10 endpoints.
func benchSnapshot(n int) Snapshot {
	snap := Snapshot{Node: Node{Name: "n1"}, Services: map[NamespacedName]*Service{}, Slices: map[NamespacedName]*EndpointSlice{}}
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		snap.Services[NamespacedName{"bench", name}] = &Service{Namespace: "bench", Name: name,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:      []ServicePortSpec{{Name: "http", Protocol: TCP, Port: 80}}}
		es := &EndpointSlice{Namespace: "bench", Name: name + "-1", ServiceName: name, Family: IPv4,
			Ports: []SlicePort{{Name: "http", Protocol: TCP, Port: 8080}}}
		for j := range 10 {
			k := i*10 + j
			es.Endpoints = append(es.Endpoints, SliceEndpoint{Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(128 + k>>16), byte(k >> 8), byte(k)})},
				Ready: true, Serving: true})
		}
		snap.Slices[NamespacedName{"bench", es.Name}] = es
	}
	return snap
}

// BenchmarkUpdateOneSlice is the model's part of one endpoint change at N
// Services × 10 endpoints: Update with the one changed slice, and the Diff
// of the ports it names.
func BenchmarkUpdateOneSlice(b *testing.B) {
	for _, n := range []int{1000, 10000, 30000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			snap := benchSnapshot(n)
			var builder Builder
			prev := builder.Build(snap)
			name := NamespacedName{"bench", fmt.Sprintf("svc-%05d-1", n/2)}
			orig := snap.Slices[name]
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				es := *orig
				es.Endpoints = orig.Endpoints[1+i%2:]
				st, keys := builder.Update(Changes{Slices: map[NamespacedName]*EndpointSlice{name: &es}})
				if d := ComputeKeys(prev, st, keys); len(d.Updated) != 1 {
					b.Fatalf("diff %+v, want one updated port", d)
				}
			}
		})
	}
}
