package nftables

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// BenchmarkKernelSync measures a full sync and a one-endpoint change into
// a real kernel (in a fresh network namespace), the costs the performance
// targets are about.
func BenchmarkKernelSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			ns := testns.New(b, "nftbench")
			p, err := New(cfgForBench(), WithNetNS(ns.FD), WithFamilies(model.IPv4))
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			snap := bigSnapshot(n, 10)
			var builder model.Builder
			st := builder.Build(snap)
			start := time.Now()
			if err := p.Sync(context.Background(), st, model.Compute(nil, st)); err != nil {
				b.Fatal(err)
			}
			full := time.Since(start)
			prev := st
			var sync time.Duration
			per := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			// Each iteration is one endpoint change as the runner sees it:
			// Build with memory, the diff, the plan and the transaction;
			// sync-ms is the backend's part (plan and transaction), its
			// mean, median and 99th percentile. The change removes one
			// endpoint of another Service each time (10 -> 9: the count
			// changes, the first time with a new pick chain).
			for i := range b.N {
				name := model.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("svc-%05d-1", i%n)}
				es := *snap.Slices[name]
				es.Endpoints = es.Endpoints[1:]
				snap.Slices[name] = &es
				next := builder.Build(snap)
				t0 := time.Now()
				if err := p.Sync(context.Background(), next, model.Compute(prev, next)); err != nil {
					b.Fatal(err)
				}
				sync += time.Since(t0)
				per = append(per, time.Since(t0))
				prev = next
			}
			b.StopTimer()
			// Five periodic resyncs with nothing changed: what the
			// process spends checking the kernel while idle.
			cpu0 := cpuTime(b)
			for range 5 {
				if err := p.Sync(context.Background(), prev, model.Diff{}); err != nil {
					b.Fatal(err)
				}
				if s := p.LastSyncStats(); !s.Skipped {
					b.Fatalf("an idle resync wrote: %+v", s)
				}
			}
			b.ReportMetric((cpuTime(b) - cpu0).Seconds(), "idle-5-cpu-s")
			b.ReportMetric(full.Seconds(), "full-sync-s")
			b.ReportMetric(float64(sync.Microseconds())/1000/float64(b.N), "sync-ms/op")
			slices.Sort(per)
			b.ReportMetric(float64(per[len(per)/2].Microseconds())/1000, "sync-p50-ms")
			b.ReportMetric(float64(per[len(per)*99/100].Microseconds())/1000, "sync-p99-ms")
		})
	}
}

func cfgForBench() proxier.Config { return flowspec.Config() }

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
