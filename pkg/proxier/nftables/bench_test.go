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

// BenchmarkIncrementalPlan is the CPU side of a one-endpoint change.
func BenchmarkIncrementalPlan(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			before := Render(bigState(n, 10), flowspec.Config(), model.IPv4)
			st := bigState(n, 10)
			sp := st.Services[svcKey(n/2)]
			sp.ClusterEndpoints = sp.ClusterEndpoints[1:]
			after := Render(st, flowspec.Config(), model.IPv4)
			b.ReportAllocs()
			for b.Loop() {
				if p := IncrementalPlan(before, after); p.Size() == 0 {
					b.Fatal("empty plan")
				}
			}
		})
	}
}
