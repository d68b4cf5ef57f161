package iptables

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// BenchmarkRender renders the IPv4 restore text of a whole State.
func BenchmarkRender(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		s := syntheticState(n, 10, false)
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			b.ReportAllocs()
			var size int
			for b.Loop() {
				size = len(Render(s, flowspec.Config(), model.IPv4))
			}
			b.ReportMetric(float64(size), "bytes/text")
		})
	}
}

// BenchmarkRenderPartial plans and renders one incremental sync at 10k
// Services × 10 endpoints: comparing the State with what was written,
// rendering the changed chains, and building the text. Each iteration
// flips between two States so that every one is a real change.
func BenchmarkRenderPartial(b *testing.B) {
	const n = 10000
	cfg := flowspec.Config()
	base := syntheticState(n, 10, false)
	k := model.ServicePortKey{Namespace: "ns7", Name: "svc5007", Port: "http", Protocol: model.TCP}
	for _, tc := range []struct {
		name string
		next *model.State
	}{
		{"one endpoint changed", withPort(base, k, func(sp *model.ServicePort) {
			eps := append([]model.Endpoint{}, sp.ClusterEndpoints[1:]...)
			setEndpoints(append(eps, endpoint(netip.MustParseAddr("10.250.0.1")))...)(sp)
		})},
		{"one Service added (PROXYD-SERVICES rewritten)", withPort(base, model.ServicePortKey{Namespace: "new", Name: "svc", Protocol: model.TCP}, func(sp *model.ServicePort) {
			sp.ClusterIPs, sp.Port = []netip.Addr{netip.MustParseAddr("10.97.0.1")}, 80
			setEndpoints(endpoint(netip.MustParseAddr("10.250.0.2")))(sp)
		})},
	} {
		b.Run(fmt.Sprintf("services=%d/%s", n, tc.name), func(b *testing.B) {
			r := newRenderer(cfg, model.IPv4)
			var t0 restoreText
			w := r.plan(&t0, base, nil, planOptions{sorted: base.Sorted})
			states := [2]*model.State{tc.next, base}
			b.ReportAllocs()
			i, size := 0, 0
			for b.Loop() {
				s := states[i%2]
				i++
				var t restoreText
				r.plan(&t, s, w, planOptions{sorted: s.Sorted})
				size = len(t.bytes())
			}
			b.ReportMetric(float64(size), "bytes/text")
		})
	}
}
