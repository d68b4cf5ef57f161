//go:build ipvsvm

package ipvs

import (
	"context"
	"strings"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// TestVMDriftRepair changes the real kernel behind the Proxier's back, as
// another agent would, checks on real packets that the change broke the
// Service, then runs the Sync the runner runs once per sync period (the
// State unchanged, so an empty Diff) and checks that it repaired the
// kernel, counted one drift repair, and that the Sync after it wrote
// nothing: no IPVS or address change and no nftables commit (the ruleset
// generation stays put).
func TestVMDriftRepair(t *testing.T) {
	web := &VirtualServer{VSKey: VSKey{Addr: addr("10.96.0.10"), Protocol: model.TCP, Port: 80}, Scheduler: DefaultScheduler}
	pod1 := RealServer{Addr: addrPort("10.244.1.11:8080"), Weight: 1}
	const masqueraded = "10.244.1.1" // what pod1 sees of the client through proxyd's rules
	for _, c := range []struct {
		name   string
		tamper func(t *testing.T)
		// broken is part of what the client gets once the kernel is changed.
		broken  string
		repairs int
	}{
		{"nothing changed", func(*testing.T) {}, masqueraded, 0},
		{"the virtual server deleted", func(t *testing.T) {
			must(t, vmHandle(t).DelService(toService(web)))
		}, "refused", 1},
		{"the real server deleted", func(t *testing.T) {
			must(t, vmHandle(t).DelDestination(toService(web), toDest(pod1)))
		}, "refused", 1},
		{"the real server's weight set to 0", func(t *testing.T) {
			must(t, vmHandle(t).UpdateDestination(toService(web), toDest(RealServer{Addr: pod1.Addr, Weight: 0})))
		}, "refused", 1},
		{"the ClusterIP taken off proxyd-ipvs0", func(t *testing.T) {
			links, err := newNetlinkLinks("")
			must(t, err)
			must(t, links.DelAddr(LinkName, web.Addr))
		}, "error", 1},
		{"the proxyd-ipvs table deleted", func(t *testing.T) {
			must(t, (&nftFirewall{}).Delete())
		}, "192.168.99.2", 1},
		{"the proxyd-ipvs table flushed", func(t *testing.T) {
			c, err := gnft.New()
			must(t, err)
			c.FlushTable(nft.GTable(nft.INet, TableName))
			must(t, c.Flush())
		}, "192.168.99.2", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, cl, p := twoPods(t)
			s := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080"))
			s.ServiceCIDRs = prefixes("10.96.0.0/16")
			ctx := context.Background()
			must(t, p.Sync(ctx, s, model.Compute(nil, s)))
			if got := ask(t, cl, "10.96.0.10:80"); got != masqueraded {
				t.Fatalf("before the change the client got %q, want %q", got, masqueraded)
			}
			want := dumpHandle(t, p.handle)

			c.tamper(t)
			got := ask(t, cl, "10.96.0.10:80")
			t.Logf("after the change the client got %q", got)
			if !strings.Contains(got, c.broken) {
				t.Errorf("after the change the client got %q, want %q: the change did not break what it should", got, c.broken)
			}

			must(t, p.Sync(ctx, s, model.Diff{}))
			st := p.LastSyncStats()
			t.Logf("the periodic Sync: %d kernel writes, %d drift repairs", st.KernelOps, st.DriftRepairs)
			if st.DriftRepairs != c.repairs {
				t.Errorf("DriftRepairs = %d, want %d", st.DriftRepairs, c.repairs)
			}
			if got := ask(t, cl, "10.96.0.10:80"); got != masqueraded {
				t.Errorf("after the periodic Sync the client got %q, want %q", got, masqueraded)
			}
			if got := dumpHandle(t, p.handle); got != want {
				t.Errorf("IPVS after the periodic Sync:\n%s\nwant:\n%s", got, want)
			}

			gen := vmGeneration(t)
			must(t, p.Sync(ctx, s, model.Diff{}))
			if st := p.LastSyncStats(); st.KernelOps != 0 || st.DriftRepairs != 0 {
				t.Errorf("the next periodic Sync: %+v, want no writes and no repairs", st)
			}
			if after := vmGeneration(t); after != gen {
				t.Errorf("the next periodic Sync committed to nftables: generation %d -> %d", gen, after)
			}
		})
	}
}

func vmGeneration(t *testing.T) uint32 {
	t.Helper()
	r, err := nft.NewReader(0)
	must(t, err)
	defer r.Close()
	gen, err := r.Generation()
	must(t, err)
	return gen
}

// TestVMDriftRepairedWithinASyncPeriod runs the Proxier under the real
// Runner with a 2 s sync period, breaks the kernel behind its back and
// measures how long the client's connections fail: at most one period
// (plus the sync itself), each repair counted in
// proxyd_drift_repairs_total{mode="ipvs"}.
func TestVMDriftRepairedWithinASyncPeriod(t *testing.T) {
	const period = 2 * time.Second
	_, _, cl, p := twoPods(t)
	s := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080"))
	s.ServiceCIDRs = prefixes("10.96.0.0/16")
	m := metrics.New(Mode)
	r := proxier.NewRunner(p, func() *model.State { return s }, proxier.RunnerOptions{MaxInterval: period, Metrics: m})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	const masqueraded = "10.244.1.1"
	waitAnswer := func(what string, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			got := ask(t, cl, "10.96.0.10:80")
			if got == masqueraded {
				return time.Since(start)
			}
			if time.Since(start) > limit {
				t.Fatalf("%s: the client still gets %q after %v", what, got, time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitAnswer("the first sync", 10*time.Second)
	for i, c := range []struct {
		what   string
		tamper func(t *testing.T)
	}{
		{"the virtual server deleted", func(t *testing.T) {
			must(t, vmHandle(t).DelService(toService(&VirtualServer{VSKey: VSKey{Addr: addr("10.96.0.10"), Protocol: model.TCP, Port: 80}, Scheduler: DefaultScheduler})))
		}},
		{"the proxyd-ipvs table flushed", func(t *testing.T) {
			c, err := gnft.New()
			must(t, err)
			c.FlushTable(nft.GTable(nft.INet, TableName))
			must(t, c.Flush())
		}},
	} {
		c.tamper(t)
		d := waitAnswer(c.what, 2*period+5*time.Second)
		t.Logf("%s: the client was answered again %v later (sync period %v)", c.what, d.Round(10*time.Millisecond), period)
		if d > period+2*time.Second {
			t.Errorf("%s: repaired after %v, more than one sync period (%v) and the sync", c.what, d, period)
		}
		if got := testutil.ToFloat64(m.DriftRepairs.WithLabelValues(Mode)); got != float64(i+1) {
			t.Errorf("after %s: proxyd_drift_repairs_total = %v, want %d", c.what, got, i+1)
		}
	}
}
