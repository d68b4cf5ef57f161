package proxier

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
)

// pickyKernel holds the service ports it was given, like a kernel holds
// rules: a Sync takes every port but those on the refused port number,
// which it leaves as they were, and removes the ports the State lacks.
type pickyKernel struct {
	mu       sync.Mutex
	refuse   uint16 // the port number the kernel refuses
	has      map[model.ServicePortKey]*model.ServicePort
	attempts map[model.ServicePortKey]int // how often each port was written
	done     chan struct{}
}

func (k *pickyKernel) Mode() string { return "picky" }
func (k *pickyKernel) Sync(_ context.Context, s *model.State, _ model.Diff) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer func() { k.done <- struct{}{} }()
	next := map[model.ServicePortKey]*model.ServicePort{}
	var refused []model.ServicePortKey
	for key, sp := range s.Services {
		if k.has[key] == sp {
			next[key] = sp
			continue
		}
		k.attempts[key]++
		if sp.Port == k.refuse {
			refused = append(refused, key)
			if old := k.has[key]; old != nil {
				next[key] = old
			}
			continue
		}
		next[key] = sp
	}
	k.has = next
	if len(refused) > 0 {
		return &RefusedError{Ports: refused, Err: errors.New("netlink receive: file exists")}
	}
	return nil
}
func (k *pickyKernel) Cleanup(context.Context) error { return nil }

func (k *pickyKernel) holds() map[model.ServicePortKey]uint16 {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[model.ServicePortKey]uint16{}
	for key, sp := range k.has {
		out[key] = sp.Port
	}
	return out
}

func (k *pickyKernel) tries(key model.ServicePortKey) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.attempts[key]
}

// warnings records the Events the runner posts.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) Warn(svc model.NamespacedName, reason, _ string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, svc.String()+" "+reason)
}

func (w *warnings) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.list)
}

func portKey(name string) model.ServicePortKey {
	return model.ServicePortKey{Namespace: "ns", Name: name, Port: "p", Protocol: model.TCP}
}

func TestARefusedPortIsRetriedWithBackoffWhileEverythingElseSyncs(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	kernel := &pickyKernel{refuse: 666, has: map[model.ServicePortKey]*model.ServicePort{},
		attempts: map[model.ServicePortKey]int{}, done: make(chan struct{}, 100)}
	var mu sync.Mutex
	ports := map[string]uint16{"good": 80, "bad": 666}
	build := func() *model.State {
		mu.Lock()
		defer mu.Unlock()
		st := &model.State{Services: map[model.ServicePortKey]*model.ServicePort{}}
		for i, name := range slices.Sorted(maps.Keys(ports)) {
			st.Services[portKey(name)] = &model.ServicePort{Key: portKey(name), Port: ports[name],
				ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)})}}
		}
		return st
	}
	set := func(name string, port uint16) {
		mu.Lock()
		ports[name] = port
		mu.Unlock()
	}
	m := metrics.New("picky")
	events := &warnings{}
	r := NewRunner(kernel, Rebuild(build), RunnerOptions{MinInterval: 0, MaxInterval: time.Minute, RetryMin: time.Second,
		Clock: clock, Metrics: m, Events: events})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Run(ctx)
	h := &harness{t: t, clock: clock, b: &fakeBackend{done: kernel.done}, r: r}
	h.waitSync()

	check := func(step string, want map[model.ServicePortKey]uint16, badTries int, refusedGauge float64) {
		t.Helper()
		if got := kernel.holds(); !maps.Equal(got, want) {
			t.Errorf("%s: the kernel holds %v, want %v", step, got, want)
		}
		if n := kernel.tries(portKey("bad")); n != badTries {
			t.Errorf("%s: the refused port was written %d times, want %d", step, n, badTries)
		}
		// The runner sets the gauge after the backend's Sync returns.
		deadline := time.Now().Add(5 * time.Second)
		for gauge(t, m, "proxyd_sync_refused_service_ports") != refusedGauge && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if got := gauge(t, m, "proxyd_sync_refused_service_ports"); got != refusedGauge {
			t.Errorf("%s: proxyd_sync_refused_service_ports = %v, want %v", step, got, refusedGauge)
		}
	}
	check("the first sync", map[model.ServicePortKey]uint16{portKey("good"): 80}, 1, 1)

	set("good", 81)
	r.OnChange("service", time.Time{})
	h.waitSync()
	check("a change to another Service", map[model.ServicePortKey]uint16{portKey("good"): 81}, 1, 1)

	h.advance(time.Second)
	h.waitSync()
	check("the first retry, after 1s", map[model.ServicePortKey]uint16{portKey("good"): 81}, 2, 1)
	h.advance(time.Second)
	h.noSync()
	h.advance(time.Second)
	h.waitSync()
	check("the second retry, 2s later", map[model.ServicePortKey]uint16{portKey("good"): 81}, 3, 1)

	set("bad", 8080) // the Service is fixed
	r.OnChange("service", time.Time{})
	h.waitSync()
	check("the fixed Service", map[model.ServicePortKey]uint16{portKey("good"): 81, portKey("bad"): 8080}, 4, 0)

	if got, want := events.get(), []string{"ns/bad " + ReasonKernelRefused}; !slices.Equal(got, want) {
		t.Errorf("events = %v, want one per refused port: %v", got, want)
	}
}

// gauge reads the gauge name from m's registry.
func gauge(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
