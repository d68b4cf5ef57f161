package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/proxyd/proxyd/pkg/informer"
	"github.com/proxyd/proxyd/pkg/model"
)

// BenchmarkUserspaceOneEndpointChange is what proxyd's userspace does for
// one endpoint change at N Services × 10 endpoints, before a backend
// renders anything: from the informer's notice to the State and the Diff a
// backend is given. PROXYD_PIPELINE_N sets N (default 10000).
func BenchmarkUserspaceOneEndpointChange(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := startWorkload(ctx, b, 10000)
	src := newSource(w.inf)
	st, _ := src.next()
	var took time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		w.change(ctx, b, i)
		b.StartTimer()
		t0 := time.Now()
		next, d := src.next()
		took += time.Since(t0)
		if len(d.Updated) != 1 {
			b.Fatalf("change %d: diff %+v, want one updated port", i, d)
		}
		st = next
	}
	_ = st
	b.ReportMetric(float64(took.Microseconds())/float64(b.N)/1000, "userspace-ms/op")
}

// source does what the runner does with the informer before a backend
// is called: the Builder applies the informer's changes, and the Diff is
// computed for the changed ports against what was written.
type source struct {
	inf     *informer.Informer
	builder model.Builder
	applied map[model.ServicePortKey]*model.ServicePort
}

func newSource(inf *informer.Informer) *source {
	return &source{inf: inf, applied: map[model.ServicePortKey]*model.ServicePort{}}
}

func (s *source) next() (*model.State, model.Diff) {
	st, keys := s.builder.Update(s.inf.Changes())
	d := model.ComputeKeys(&model.State{Services: s.applied}, st, keys)
	for _, k := range keys {
		if sp := st.Services[k]; sp != nil {
			s.applied[k] = sp
		} else {
			delete(s.applied, k)
		}
	}
	return st, d
}
