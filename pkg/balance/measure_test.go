package balance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
)

// The measurement behind the choice of a periodic walk over an event
// subscription (README, "Connection balance"). It runs only when asked:
//
//	PXD_BALANCE_MEASURE=60s,200,1000 go test -run TestMeasureEventsVsWalk -v ./pkg/balance/
//
// (window per phase, then churn rates in connections per second). In a
// fresh namespace it creates 100k established entries, then runs a churn
// generator — real TCP connections over loopback, each opened, answered
// and closed, in a process of its own — and measures, per rate, one
// window of each consumer: the walk every 30 s, and an event listener
// (new, update and destroy) keeping the table's state. CPU is user +
// system time of the consumer (this process) and of the generator, whose
// system time includes the kernel's cost of building events on the packet
// path; memory is the live heap after a GC.
const (
	envMeasure  = "PXD_BALANCE_MEASURE"
	envChurn    = "PXD_BALANCE_CHURN" // rate,duration for the generator
	churnListen = "127.0.0.1:9000"
)

func TestMeasureEventsVsWalk(t *testing.T) {
	spec := os.Getenv(envMeasure)
	if spec == "" {
		t.Skip("set " + envMeasure + "=WINDOW,RATE[,RATE...] to measure")
	}
	parts := strings.Split(spec, ",")
	window, err := time.ParseDuration(parts[0])
	if err != nil || len(parts) < 2 {
		t.Fatalf("%s=%q: want WINDOW,RATE[,RATE...]", envMeasure, spec)
	}
	ns := testns.New(t, "ctmeasure")
	// Loopback connections are tracked only when a rule needs conntrack;
	// TIME_WAIT is shortened so that destroys follow the churn within the
	// window (the events per connection are the same).
	ns.Run(t, "nft", "add table ip m; add chain ip m out { type filter hook output priority 0; }; add rule ip m out ct state new counter")
	ns.Run(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5")
	fill(t, ns, benchEntries)
	s := nodeState(benchServices, benchEps)
	churnKey := model.ServicePortKey{Namespace: "bench", Name: "churn", Protocol: model.TCP}
	lo := []model.Endpoint{{IP: netip.MustParseAddr("127.0.0.1"), Port: 9000, Ready: true}}
	s.Services[churnKey] = &model.ServicePort{Key: churnKey, ClusterIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Port: 9000,
		Endpoints: lo, ClusterEndpoints: lo}

	for _, r := range parts[1:] {
		rate, err := strconv.Atoi(r)
		if err != nil {
			t.Fatal(err)
		}
		gen := startChurn(t, ns, rate, 3*window+20*time.Second)
		time.Sleep(10 * time.Second) // TIME_WAIT entries reach their steady count
		idle := measure(gen, window, func() {})
		walk := measureWalk(t, ns, s, gen, window)
		ev := measureEvents(t, ns, s, gen, window)
		t.Logf("churn %d conn/s, %v per phase, 100k established entries + churn:", rate, window)
		t.Logf("  no consumer:  generator %6.2f CPU-s/min", idle.gen)
		t.Logf("  walk / 30 s:  consumer %6.2f CPU-s/min, generator %6.2f CPU-s/min, heap %5.1f MiB, %d walks", walk.cpu, walk.gen, walk.heap, walk.n)
		t.Logf("  events:       consumer %6.2f CPU-s/min, generator %6.2f CPU-s/min, heap %5.1f MiB, %d events, %d overflows (+ initial dump %v CPU)",
			ev.cpu, ev.gen, ev.heap, ev.n, ev.overflows, ev.seed.Round(time.Millisecond))
		_ = gen.Process.Kill()
		_ = gen.Wait()
	}
}

type sample struct {
	cpu, gen, heap float64
	n, overflows   int
	seed           time.Duration
}

// measure runs f (which must return at once) and waits out the window,
// returning the CPU per minute of this process and of the generator.
func measure(gen *exec.Cmd, window time.Duration, f func()) sample {
	c0, g0 := cpuTime(), procCPU(gen.Process.Pid)
	f()
	time.Sleep(window)
	perMin := float64(time.Minute) / float64(window)
	return sample{cpu: (cpuTime() - c0).Seconds() * perMin, gen: (procCPU(gen.Process.Pid) - g0).Seconds() * perMin}
}

func measureWalk(t *testing.T, ns *testns.NS, s *model.State, gen *exec.Cmd, window time.Duration) sample {
	r, err := conntrack.NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	walks := 0
	src := KernelSource(r)
	counted := func(fn func(*conntrack.Entry) bool) error { walks++; return src(fn) }
	c := New(Config{Interval: 30 * time.Second}, counted, nil, nil)
	c.Programmed(s, model.Compute(nil, s))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	res := measure(gen, window, func() {
		go func() { c.Run(ctx); close(done) }()
	})
	cancel()
	<-done
	res.heap = liveHeap()
	res.n = walks
	runtime.KeepAlive(c)
	return res
}

// tracker is what an event-driven collector must keep: every entry's
// Service, endpoint and state, since an update names only the entry.
type tracker struct {
	ix     *index
	flows  map[uint32]tracked
	counts map[*service][]int
}

type tracked struct {
	svc *service
	ep  int
	est bool
}

func (tr *tracker) apply(typ conntrack.EventType, e *conntrack.Entry) {
	old, had := tr.flows[e.ID]
	if had && old.est {
		tr.counts[old.svc][old.ep]--
	}
	if typ == conntrack.EventDestroy {
		delete(tr.flows, e.ID)
		return
	}
	svc, ep, ok := tr.ix.lookup(e)
	if !ok {
		return
	}
	f := tracked{svc: svc, ep: ep, est: e.Established()}
	tr.flows[e.ID] = f
	if f.est {
		if tr.counts[svc] == nil {
			tr.counts[svc] = make([]int, len(svc.ips))
		}
		tr.counts[svc][ep]++
	}
}

func measureEvents(t *testing.T, ns *testns.NS, s *model.State, gen *exec.Cmd, window time.Duration) sample {
	tr := &tracker{ix: buildIndex(s, nil), flows: map[uint32]tracked{}, counts: map[*service][]int{}}
	seed := cpuTime()
	r, err := conntrack.NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []model.IPFamily{model.IPv4, model.IPv6} {
		if err := r.Dump(f, func(e *conntrack.Entry) { tr.apply(conntrack.EventNew, e) }); err != nil {
			t.Fatal(err)
		}
	}
	_ = r.Close()
	seedCPU := cpuTime() - seed
	l, err := conntrack.NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	n, overflows := 0, 0
	stop := make(chan struct{})
	done := make(chan struct{})
	res := measure(gen, window, func() {
		go func() {
			defer close(done)
			for {
				err := l.Listen(true, 8<<20, func(ev *conntrack.Event) bool {
					n++
					tr.apply(ev.Type, &ev.Entry)
					select {
					case <-stop:
						return false
					default:
						return true
					}
				})
				if err != conntrack.ErrOverflow {
					return
				}
				overflows++ // a real collector would now dump again
			}
		}()
	})
	close(stop)
	_ = l.Close() // unblocks a Listen waiting for the next event
	<-done
	res.heap, res.n, res.overflows, res.seed = liveHeap(), n, overflows, seedCPU
	runtime.KeepAlive(tr)
	return res
}

func liveHeap() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// procCPU is a process's user + system time from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ
}

// startChurn runs TestChurnGenerator in ns as a process of its own.
func startChurn(t *testing.T, ns *testns.NS, rate int, d time.Duration) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, self, "-test.run=^TestChurnGenerator$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%v", envChurn, rate, d))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// TestChurnGenerator is the churn process: rate short TCP connections a
// second to a loopback echo, each answered once and closed.
func TestChurnGenerator(t *testing.T) {
	spec := os.Getenv(envChurn)
	if spec == "" {
		t.Skip("runs only as TestMeasureEventsVsWalk's generator")
	}
	rs, ds, _ := strings.Cut(spec, ",")
	rate, _ := strconv.Atoi(rs)
	d, _ := time.ParseDuration(ds)
	ln, err := net.Listen("tcp", churnListen)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				b := make([]byte, 1)
				if _, err := c.Read(b); err == nil {
					_, _ = c.Write(b)
				}
				_ = c.Close()
			}()
		}
	}()
	end := time.After(d)
	if rate <= 0 {
		<-end
		return
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		select {
		case <-end:
			return
		case <-tick.C:
			go func() {
				c, err := net.Dial("tcp", churnListen)
				if err != nil {
					return
				}
				b := []byte{1}
				_, _ = c.Write(b)
				_, _ = c.Read(b)
				_ = c.Close()
			}()
		}
	}
}
