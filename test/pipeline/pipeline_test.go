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
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("PROXYD_PIPELINE_N")); err == nil && v > 0 {
		n = v
	}
	t := b
	ns := testns.New(t, "pipe")
	var objs []runtime.Object
	for i := range n {
		svc, es := objects(i)
		objs = append(objs, svc, es)
	}
	// NewClientset's field-managed tracker builds a REST mapper per create,
	// which takes minutes at 10k objects; the plain tracker is enough here.
	client := fake.NewSimpleClientset(objs...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := recorder{ch: make(chan struct{}, 1)}
	inf := informer.New(client, informer.Options{NodeName: "node1"}, rec)
	go inf.Run(ctx)
	if err := inf.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	backend, err := nftables.New(proxier.Config{}, nftables.WithNetNS(ns.FD), nftables.WithFamilies(model.IPv4))
	if err != nil {
		t.Fatal(err)
	}
	src := newSource(inf)
	start := time.Now()
	st, d := src.next()
	if err := backend.Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	fullSync := time.Since(start) // ResetTimer would drop a metric reported now
	var build, sync time.Duration
	b.ResetTimer()
	for i := range b.N {
		_, es := objects(i % n)
		es.Endpoints[3].Conditions.Ready = ptr(i/n%2 == 1)
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
	objs = nil
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
	goruntime.KeepAlive(inf)
	goruntime.KeepAlive(client)
}
