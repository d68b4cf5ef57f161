// Package pipeline measures proxyd's whole sync path in one process: the
// informers (over a fake clientset), the incremental Builder, the diff and the
// nftables backend writing into a real kernel in a fresh network
// namespace. It is what one endpoint change costs a node at scale, without
// an apiserver in the loop.
package pipeline

import (
	"context"
	"flag"
	"fmt"
	"os"
	goruntime "runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/informer"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/nftables"
)

type recorder struct{ ch chan struct{} }

func (r recorder) OnChange(string, time.Time) {
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

func ptr[T any](v T) *T { return &v }

func objects(i int) (*v1.Service, *discovery.EndpointSlice) {
	name := fmt.Sprintf("svc-%05d", i)
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
		Spec: v1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.%d.%d", i>>8, i&255), ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i>>8, i&255)},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}}
	es := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name + "-1",
		Labels: map[string]string{discovery.LabelServiceName: name}}, AddressType: discovery.AddressTypeIPv4,
		Ports: []discovery.EndpointPort{{Name: ptr("http"), Protocol: ptr(v1.ProtocolTCP), Port: ptr(int32(8080))}}}
	for j := range 10 {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{fmt.Sprintf("10.244.1.%d", 11+j)},
			Conditions: discovery.EndpointConditions{Ready: ptr(true)}})
	}
	return svc, es
}

// workload is an informer over a fake clientset holding N Services × 10
// endpoints, N from PROXYD_PIPELINE_N.
type workload struct {
	n      int
	client *fake.Clientset
	inf    *informer.Informer
	rec    recorder
}

// startWorkload starts the informer and waits for its caches; n is the
// default N.
func startWorkload(ctx context.Context, b *testing.B, n int) *workload {
	b.Helper()
	if v, err := strconv.Atoi(os.Getenv("PROXYD_PIPELINE_N")); err == nil && v > 0 {
		n = v
	}
	var objs []runtime.Object
	for i := range n {
		svc, es := objects(i)
		objs = append(objs, svc, es)
	}
	// NewClientset's field-managed tracker builds a REST mapper per create,
	// which takes minutes at 10k objects; the plain tracker is enough here.
	w := &workload{n: n, client: fake.NewSimpleClientset(objs...), rec: recorder{ch: make(chan struct{}, 1)}}
	w.inf = informer.New(w.client, informer.Options{NodeName: "node1"}, w.rec)
	go w.inf.Run(ctx)
	if err := w.inf.WaitForSync(ctx); err != nil {
		b.Fatal(err)
	}
	return w
}

// change flips the readiness of one endpoint of Service i mod N and waits
// until the informer reports it.
func (w *workload) change(ctx context.Context, b *testing.B, i int) {
	b.Helper()
	_, es := objects(i % w.n)
	es.Endpoints[3].Conditions.Ready = ptr(i/w.n%2 == 1)
	for len(w.rec.ch) > 0 {
		<-w.rec.ch
	}
	if _, err := w.client.DiscoveryV1().EndpointSlices("bench").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
	select {
	case <-w.rec.ch:
	case <-time.After(10 * time.Second):
		b.Fatal("the informer never reported the change")
	}
}

// heapProfile names a file for BenchmarkPipelineOneEndpointChange to write
// the heap profile of its steady state into.
var heapProfile = flag.String("heapprofile", "", "write the steady state's heap profile to this file")

// BenchmarkPipelineOneEndpointChange syncs N Services × 10 endpoints, then
// times single-endpoint changes from the informer's event to the kernel's
// commit: the informer's changes, the Builder's Update, the Diff of the
// changed keys and the nftables transaction. After the changes it reports
// the live heap (after a GC) of that steady state — the informer's caches
// and the fake clientset's copy of every object included — and writes its
// profile with -heapprofile FILE. PROXYD_PIPELINE_N sets N (default 1000).
func BenchmarkPipelineOneEndpointChange(b *testing.B) {
	t := b
	ns := testns.New(t, "pipe")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := startWorkload(ctx, b, 1000)
	backend, err := nftables.New(proxier.Config{}, nftables.WithNetNS(ns.FD), nftables.WithFamilies(model.IPv4))
	if err != nil {
		t.Fatal(err)
	}
	src := newSource(w.inf)
	start := time.Now()
	st, d := src.next()
	if err := backend.Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	fullSync := time.Since(start) // ResetTimer would drop a metric reported now
	var build, sync time.Duration
	b.ResetTimer()
	for i := range b.N {
		w.change(ctx, b, i)
		t0 := time.Now()
		next, d := src.next()
		t1 := time.Now()
		if err := backend.Sync(ctx, next, d); err != nil {
			b.Fatal(err)
		}
		if s := backend.LastSyncStats(); s.Full || s.KernelOps == 0 {
			b.Fatalf("change %d: not an incremental write: %+v", i, s)
		}
		build += t1.Sub(t0)
		sync += time.Since(t1)
		st = next
	}
	b.ReportMetric(fullSync.Seconds(), "full-sync-s")
	b.ReportMetric(float64(build.Microseconds())/float64(b.N)/1000, "build+diff-ms/op")
	b.ReportMetric(float64(sync.Microseconds())/float64(b.N)/1000, "kernel-sync-ms/op")
	b.StopTimer()
	goruntime.GC()
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
	if *heapProfile != "" {
		f, err := os.Create(*heapProfile)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			b.Fatal(err)
		}
	}
	goruntime.KeepAlive(st)
	goruntime.KeepAlive(src)
	goruntime.KeepAlive(backend)
	goruntime.KeepAlive(w)
}
