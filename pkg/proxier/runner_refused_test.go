package proxier

import (
	"context"
	"errors"
	"fmt"
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
// A sticky one is a backend like nftables mode's: it keeps a refused port
// out, and names it in every Sync's RefusedError, until the Diff says the
// port changed.
type pickyKernel struct {
	mu       sync.Mutex
	refuse   uint16 // the port number the kernel refuses
	sticky   bool
	out      map[model.ServicePortKey]bool
	has      map[model.ServicePortKey]*model.ServicePort
	attempts map[model.ServicePortKey]int // how often each port was written
	done     chan struct{}
}

func (k *pickyKernel) Mode() string { return "picky" }
func (k *pickyKernel) Sync(_ context.Context, s *model.State, d model.Diff) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer func() { k.done <- struct{}{} }()
	for _, key := range d.Changed() {
		delete(k.out, key)
	}
	next := map[model.ServicePortKey]*model.ServicePort{}
	var refused []model.ServicePortKey
	for key := range k.out {
		refused = append(refused, key)
		if old := k.has[key]; old != nil {
			next[key] = old
		}
	}
	for key, sp := range s.Services {
		if k.out[key] {
			continue
		}
		if k.has[key] == sp {
			next[key] = sp
			continue
		}
		k.attempts[key]++
		if sp.Port == k.refuse {
			refused = append(refused, key)
			if k.sticky {
				k.out[key] = true
			}
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

// portTable is the desired port number of each Service "ns/NAME", one
// service port each, changed by the test while the runner builds States.
type portTable struct {
	mu    sync.Mutex
	ports map[string]uint16
}

func (p *portTable) build() *model.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &model.State{Services: map[model.ServicePortKey]*model.ServicePort{}}
	for i, name := range slices.Sorted(maps.Keys(p.ports)) {
		st.Services[portKey(name)] = &model.ServicePort{Key: portKey(name), Port: p.ports[name],
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)})}}
	}
	return st
}

func (p *portTable) set(name string, port uint16) {
	p.mu.Lock()
	p.ports[name] = port
	p.mu.Unlock()
}

func portKey(name string) model.ServicePortKey {
	return model.ServicePortKey{Namespace: "ns", Name: name, Port: "p", Protocol: model.TCP}
}

func TestARefusedPortIsRetriedWithBackoffWhileEverythingElseSyncs(t *testing.T) {
	for _, sticky := range []bool{false, true} {
		t.Run(fmt.Sprintf("a backend that names a refused port until it changes: %v", sticky), func(t *testing.T) {
			refusedPortRetries(t, sticky)
		})
	}
}

func refusedPortRetries(t *testing.T, sticky bool) {
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	kernel := &pickyKernel{refuse: 666, sticky: sticky, out: map[model.ServicePortKey]bool{}, has: map[model.ServicePortKey]*model.ServicePort{},
		attempts: map[model.ServicePortKey]int{}, done: make(chan struct{}, 100)}
	pt := &portTable{ports: map[string]uint16{"good": 80, "bad": 666}}
	build, set := pt.build, pt.set
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

// A refused update keeps the port's previous rules and is tried again only
// when its backoff expires, even though a sticky backend names it in
// every sync while it is kept back.
func TestARefusedUpdateIsRetriedOnlyAfterItsBackoff(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	kernel := &pickyKernel{refuse: 666, sticky: true, out: map[model.ServicePortKey]bool{}, has: map[model.ServicePortKey]*model.ServicePort{},
		attempts: map[model.ServicePortKey]int{}, done: make(chan struct{}, 100)}
	pt := &portTable{ports: map[string]uint16{"good": 80, "bad": 80}}
	build, set := pt.build, pt.set
	r := NewRunner(kernel, Rebuild(build), RunnerOptions{MinInterval: 0, MaxInterval: time.Minute, RetryMin: time.Second, Clock: clock})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Run(ctx)
	h := &harness{t: t, clock: clock, b: &fakeBackend{done: kernel.done}, r: r}
	h.waitSync()

	step := func(name string, change func(), wantTries int) {
		t.Helper()
		change()
		h.waitSync()
		if n := kernel.tries(portKey("bad")); n != wantTries {
			t.Errorf("%s: the port was written %d times, want %d", name, n, wantTries)
		}
		if got := kernel.holds()[portKey("bad")]; got != 80 {
			t.Errorf("%s: the kernel holds the port at %d, want its previous 80", name, got)
		}
	}
	notify := func() { r.OnChange("service", time.Time{}) }
	step("the refused update", func() { set("bad", 666); notify() }, 2)
	step("a change elsewhere while it is kept back", func() { set("good", 81); notify() }, 2)
	step("another change elsewhere", func() { set("good", 82); notify() }, 2)
	step("its backoff expired", func() { h.advance(time.Second) }, 3)
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
