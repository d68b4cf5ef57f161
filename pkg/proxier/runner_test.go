package proxier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/healthz"
	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
)

// fakeBackend records when it was synced and fails on demand.
type fakeBackend struct {
	mu    sync.Mutex
	clock *clocktesting.FakeClock
	syncs []time.Time
	fail  int
	done  chan struct{}
}

func (f *fakeBackend) Mode() string { return "fake" }
func (f *fakeBackend) Sync(context.Context, *model.State, model.Diff) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs = append(f.syncs, f.clock.Now())
	defer func() { f.done <- struct{}{} }()
	if f.fail > 0 {
		f.fail--
		return errors.New("kernel said no")
	}
	return nil
}
func (f *fakeBackend) Cleanup(context.Context) error { return nil }

func (f *fakeBackend) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.syncs...)
}

type harness struct {
	t      *testing.T
	clock  *clocktesting.FakeClock
	b      *fakeBackend
	r      *Runner
	start  time.Time
	health *healthz.Health
}

func newHarness(t *testing.T, min, max time.Duration) *harness {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(start)
	b := &fakeBackend{clock: clock, done: make(chan struct{}, 100)}
	h := healthz.New(clock, 2*max)
	r := NewRunner(b, func() *model.State { return &model.State{} }, RunnerOptions{
		MinInterval: min, MaxInterval: max, Clock: clock, Metrics: metrics.New("fake"), Health: h})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Run(ctx)
	hs := &harness{t: t, clock: clock, b: b, r: r, start: start, health: h}
	hs.waitSync() // the initial sync
	return hs
}

func (h *harness) waitSync() {
	h.t.Helper()
	select {
	case <-h.b.done:
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no sync; syncs so far at %v", h.offsets())
	}
}

func (h *harness) noSync() {
	h.t.Helper()
	// Let the runner goroutine reach its timer before we look.
	time.Sleep(20 * time.Millisecond)
	select {
	case <-h.b.done:
		h.t.Fatalf("unexpected sync; syncs at %v", h.offsets())
	default:
	}
}

// advance moves the fake clock once the runner waits on a timer.
func (h *harness) advance(d time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.clock.HasWaiters() {
		if time.Now().After(deadline) {
			h.t.Fatal("runner never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
	h.clock.Step(d)
}

func (h *harness) offsets() []time.Duration {
	var out []time.Duration
	for _, t := range h.b.times() {
		out = append(out, t.Sub(h.start))
	}
	return out
}

func TestRunnerSyncsAtOnceWhenIdleLongerThanMinInterval(t *testing.T) {
	h := newHarness(t, time.Second, 30*time.Second)
	h.advance(5 * time.Second)
	h.r.OnChange("endpoints", time.Time{})
	h.waitSync()
	if got := h.offsets(); got[1] != 5*time.Second {
		t.Errorf("syncs at %v, want the second at 5s", got)
	}
}

func TestRunnerCoalescesChangesWithinMinInterval(t *testing.T) {
	h := newHarness(t, time.Second, 30*time.Second)
	h.r.OnChange("service", time.Time{})
	h.r.OnChange("endpoints", time.Time{})
	h.r.OnChange("endpoints", time.Time{})
	h.noSync()
	h.advance(999 * time.Millisecond)
	h.noSync()
	h.advance(time.Millisecond)
	h.waitSync()
	h.noSync()
	if got := h.offsets(); len(got) != 2 || got[1] != time.Second {
		t.Errorf("syncs at %v, want [0s 1s]", got)
	}
}

func TestRunnerResyncsEverySyncPeriod(t *testing.T) {
	h := newHarness(t, time.Second, 30*time.Second)
	h.advance(29 * time.Second)
	h.noSync()
	h.advance(time.Second)
	h.waitSync()
	h.advance(30 * time.Second)
	h.waitSync()
	if got := h.offsets(); len(got) != 3 || got[1] != 30*time.Second || got[2] != 60*time.Second {
		t.Errorf("syncs at %v, want [0s 30s 1m0s]", got)
	}
}

func TestRunnerRetriesFailuresWithBackoff(t *testing.T) {
	h := newHarness(t, 0, 30*time.Second)
	h.b.mu.Lock()
	h.b.fail = 3
	h.b.mu.Unlock()
	h.r.OnChange("endpoints", time.Time{})
	h.waitSync() // fails at 0s
	h.advance(time.Second)
	h.waitSync() // fails at 1s
	h.advance(2 * time.Second)
	h.waitSync() // fails at 3s
	h.advance(3 * time.Second)
	h.noSync()
	h.advance(time.Second)
	h.waitSync() // succeeds at 7s
	if got := h.offsets(); len(got) != 5 || got[4] != 7*time.Second {
		t.Errorf("syncs at %v, want retries at 1s, 3s, 7s", got)
	}
	if ok, _ := h.health.Healthy(); !ok {
		t.Error("unhealthy after a successful sync")
	}
}

func TestHealthFailsWhenAQueuedChangeIsNotSyncedInTime(t *testing.T) {
	h := newHarness(t, 0, 30*time.Second)
	h.b.mu.Lock()
	h.b.fail = 1000
	h.b.mu.Unlock()
	h.r.OnChange("endpoints", time.Time{})
	h.waitSync()
	for range 3 {
		h.advance(30 * time.Second)
		h.waitSync()
	}
	if ok, _ := h.health.Healthy(); ok {
		t.Error("healthy although a change has waited 90s, over 2x the sync period")
	}
}

// failingBackend fails every partial Sync with err.
type failingBackend struct{ err error }

func (failingBackend) Mode() string                                           { return "iptables" }
func (b failingBackend) Sync(context.Context, *model.State, model.Diff) error { return b.err }
func (failingBackend) Cleanup(context.Context) error                          { return nil }
func (failingBackend) LastSyncStats() SyncStats                               { return SyncStats{} }

func TestFailedSyncsAreCountedPerFamilyAsKubeProxyDoes(t *testing.T) {
	m := metrics.New("iptables")
	b := failingBackend{err: fmt.Errorf("sync: %w", &FamilyError{Family: model.IPv6, Err: errors.New("iptables-restore: exit 1")})}
	r := NewRunner(b, func() *model.State { return &model.State{} }, RunnerOptions{
		MinInterval: time.Second, MaxInterval: time.Minute, Clock: clocktesting.NewFakeClock(time.Now()), Metrics: m})
	r.syncOnce(context.Background())
	for _, c := range []struct {
		name, family string
		want         float64
	}{
		{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "IPv6", 1},
		{"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total", "IPv6", 1},
		{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "IPv4", 0},
	} {
		if got := counter(t, m, c.name, "ip_family", c.family); got != c.want {
			t.Errorf("%s{ip_family=%s} = %v, want %v", c.name, c.family, got, c.want)
		}
	}
}

// counter reads the counter name{label=value} from m's registry.
func counter(t *testing.T, m *metrics.Metrics, name, label, value string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return metric.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// repairingBackend reports two drift repairs on every Sync.
type repairingBackend struct{ failingBackend }

func (repairingBackend) Sync(context.Context, *model.State, model.Diff) error { return nil }
func (repairingBackend) LastSyncStats() SyncStats                             { return SyncStats{DriftRepairs: 2} }

func TestDriftRepairsAreCountedByMode(t *testing.T) {
	m := metrics.New("iptables")
	r := NewRunner(repairingBackend{}, func() *model.State { return &model.State{} }, RunnerOptions{
		MinInterval: time.Second, MaxInterval: time.Minute, Clock: clocktesting.NewFakeClock(time.Now()), Metrics: m})
	r.syncOnce(context.Background())
	r.syncOnce(context.Background())
	if got := counter(t, m, "proxyd_drift_repairs_total", "mode", "iptables"); got != 4 {
		t.Errorf("proxyd_drift_repairs_total{mode=iptables} = %v, want 4", got)
	}
}
