package pipeline

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/proxyd/proxyd/pkg/informer"
	"github.com/proxyd/proxyd/pkg/model"
)

// BenchmarkUserspaceOneEndpointChange is what proxyd's userspace does for
// one endpoint change at N Services × 10 endpoints, before a backend
// renders anything: from the informer's notice to the State and the Diff a
// backend is given. PROXYD_PIPELINE_N sets N (default 10000).
func BenchmarkUserspaceOneEndpointChange(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("PROXYD_PIPELINE_N")); err == nil && v > 0 {
		n = v
	}
	var objs []runtime.Object
	for i := range n {
		svc, es := objects(i)
		objs = append(objs, svc, es)
	}
	client := fake.NewSimpleClientset(objs...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := recorder{ch: make(chan struct{}, 1)}
	inf := informer.New(client, informer.Options{NodeName: "node1"}, rec)
	go inf.Run(ctx)
	if err := inf.WaitForSync(ctx); err != nil {
		b.Fatal(err)
	}
	src := newSource(inf)
	st, _ := src.next()
	var took time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		_, es := objects(i % n)
		es.Endpoints[3].Conditions.Ready = ptr(i/n%2 == 1)
		b.StopTimer()
		for len(rec.ch) > 0 {
			<-rec.ch
		}
		if _, err := client.DiscoveryV1().EndpointSlices("bench").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		select {
		case <-rec.ch:
		case <-time.After(10 * time.Second):
			b.Fatal("the informer never reported the change")
		}
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
