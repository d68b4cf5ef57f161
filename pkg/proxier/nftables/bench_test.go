package nftables

import (
	"fmt"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// BenchmarkBuildAndRender is the CPU side of a full sync: model.Build from
// a snapshot, then Render of the IPv4 ruleset.
func BenchmarkBuildAndRender(b *testing.B) {
	for _, n := range []int{1000, 10000, 30000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			snap := bigSnapshot(n, 10)
			b.ReportAllocs()
			for b.Loop() {
				Render(model.Build(snap), flowspec.Config(), model.IPv4)
			}
		})
	}
}

// BenchmarkIncrementalPlan is the CPU side of a one-endpoint change:
// Build with memory, the diff and the plan.
func BenchmarkIncrementalPlan(b *testing.B) {
	for _, n := range []int{1000, 10000, 30000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			snap := bigSnapshot(n, 10)
			var builder model.Builder
			cfg := flowspec.Config()
			prev := builder.Build(snap)
			_, w := renderAll(prev, cfg, model.IPv4)
			name := model.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("svc-%05d-1", n/2)}
			orig := snap.Slices[name]
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				es := *orig
				es.Endpoints = orig.Endpoints[1+i%2:]
				snap.Slices[name] = &es
				next := builder.Build(snap)
				if p := w.update(next, model.Compute(prev, next).Changed(), cfg, model.IPv4); p.Size() == 0 {
					b.Fatal("empty plan")
				}
				prev = next
			}
		})
	}
}
