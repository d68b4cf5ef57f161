package nftables

import (
	"fmt"
	"maps"
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

// BenchmarkIncrementalPlan is the CPU side of a one-endpoint change, as
// the runner drives it: the Builder's Update with the one changed slice,
// the Diff of the keys it names against what was written, and the plan.
func BenchmarkIncrementalPlan(b *testing.B) {
	for _, n := range []int{1000, 10000, 30000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			snap := bigSnapshot(n, 10)
			var builder model.Builder
			cfg := flowspec.Config()
			st := builder.Build(snap)
			applied := &model.State{Services: maps.Clone(st.Services)}
			_, w := renderAll(st, cfg, model.IPv4)
			name := model.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("svc-%05d-1", n/2)}
			orig := snap.Slices[name]
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				es := *orig
				es.Endpoints = orig.Endpoints[1+i%2:]
				st, keys := builder.Update(model.Changes{Slices: map[model.NamespacedName]*model.EndpointSlice{name: &es}})
				d := model.ComputeKeys(applied, st, keys)
				if p := w.update(st, d.Changed(), cfg, model.IPv4); p.Size() == 0 {
					b.Fatal("empty plan")
				}
				for _, k := range keys {
					applied.Services[k] = st.Services[k]
				}
			}
		})
	}
}
