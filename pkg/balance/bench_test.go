package balance

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/internal/cttest"
	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
)

// The benchmarks' node: 100k established connections to 1000 Services ×
// 10 endpoints, laid out as cttest.Node lays out its entries.
const (
	benchEntries  = 100_000
	benchServices = 1000
	benchEps      = 10
)

// nodeState is the State whose Services and endpoints cttest.Node's
// entries belong to.
func nodeState(services, eps int) *model.State {
	s := &model.State{Services: map[model.ServicePortKey]*model.ServicePort{}}
	for v := range services {
		f := cttest.Node(v, services, eps) // entry v goes to VIP v, endpoint 0
		k := model.ServicePortKey{Namespace: "bench", Name: fmt.Sprintf("svc-%d", v), Port: "http", Protocol: model.TCP}
		var list []model.Endpoint
		for ep := range eps {
			r := cttest.Node(v+ep*services, services, eps).Reply
			list = append(list, model.Endpoint{IP: r.Addr(), Port: r.Port(), Ready: true, Serving: true})
		}
		s.Services[k] = &model.ServicePort{Key: k, ClusterIPs: []netip.Addr{f.Dst.Addr()}, Port: f.Dst.Port(),
			Endpoints: list, ClusterEndpoints: list}
	}
	return s
}

// BenchmarkScan100k is one walk's userspace work over 100k entries: the
// lookups, first-seen bookkeeping and spreads, without the kernel.
func BenchmarkScan100k(b *testing.B) {
	entries := make([]conntrack.Entry, benchEntries)
	for i := range entries {
		f := cttest.Node(i, benchServices, benchEps)
		entries[i] = conntrack.Entry{ID: uint32(i + 1), Proto: f.Proto, TCPState: conntrack.TCPEstablished,
			Orig: conntrack.Tuple{Src: f.Src, Dst: f.Dst}, Reply: conntrack.Tuple{Src: f.Reply, Dst: f.Src}}
	}
	src := func(fn func(*conntrack.Entry) bool) error {
		for i := range entries {
			if !fn(&entries[i]) {
				break
			}
		}
		return nil
	}
	c := New(Config{}, src, nil, nil)
	s := nodeState(benchServices, benchEps)
	c.Programmed(s, model.Compute(nil, s))
	checkScan(b, c)
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		if err := c.Scan(); err != nil {
			b.Fatal(err)
		}
	}
	reportPerMinute(b, cpuTime()-cpu)
}

// BenchmarkKernelWalk100k is one walk of a real conntrack table of 100k
// entries in a fresh network namespace: the dump over ctnetlink, the
// decoding and the userspace work.
func BenchmarkKernelWalk100k(b *testing.B) {
	ns := testns.New(b, "ctbench")
	fill(b, ns, benchEntries)
	r, err := conntrack.NewReader(ns.FD)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Close() })
	c := New(Config{}, KernelSource(r), nil, nil)
	s := nodeState(benchServices, benchEps)
	c.Programmed(s, model.Compute(nil, s))
	checkScan(b, c)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	cpu, sys := cpuTime(), sysTime()
	for b.Loop() {
		if err := c.Scan(); err != nil {
			b.Fatal(err)
		}
	}
	reportPerMinute(b, cpuTime()-cpu)
	b.ReportMetric((sysTime()-sys).Seconds()*1000/float64(b.N), "sys-ms/walk")
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc)/(1<<20), "MiB-heap-live")
	runtime.KeepAlive(c)
}

// checkScan walks once and fails unless every entry was attributed.
func checkScan(b *testing.B, c *Collector) {
	b.Helper()
	if err := c.Scan(); err != nil {
		b.Fatal(err)
	}
	total := 0
	c.mu.Lock()
	for _, s := range c.last.services {
		total += s.Total
	}
	c.mu.Unlock()
	if total != benchEntries {
		b.Fatalf("the walk attributed %d connections, want %d", total, benchEntries)
	}
}

// reportPerMinute reports the CPU time (user and system, of the whole
// process: on a busy machine wall time says little) of one walk, and what
// one minute of walks costs at the default interval (30 s).
func reportPerMinute(b *testing.B, cpu time.Duration) {
	perWalk := cpu.Seconds() / float64(b.N)
	b.ReportMetric(perWalk*1000, "cpu-ms/walk")
	b.ReportMetric(perWalk*float64(time.Minute/(30*time.Second)), "cpu-s/min@30s")
}

// cpuTime is the process's user plus system time so far.
func cpuTime() time.Duration {
	u, s := rusage()
	return u + s
}

// sysTime is the process's system time so far: for a walk, mostly the
// kernel's dump.
func sysTime() time.Duration {
	_, s := rusage()
	return s
}

func rusage() (user, sys time.Duration) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// fill creates n node-shaped entries in ns's conntrack table.
func fill(tb testing.TB, ns *testns.NS, n int) {
	tb.Helper()
	tab, err := cttest.Open(ns.FD)
	if err != nil {
		tb.Fatal(err)
	}
	defer tab.Close()
	start := time.Now()
	for i := range n {
		if err := tab.Create(cttest.Node(i, benchServices, benchEps)); err != nil {
			tb.Fatalf("entry %d: %v", i, err)
		}
	}
	tb.Logf("created %d conntrack entries in %v", n, time.Since(start).Round(time.Millisecond))
}
