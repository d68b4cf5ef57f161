package proxier

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/proxyd/proxyd/pkg/healthz"
	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
)

// RunnerOptions configure a Runner.
type RunnerOptions struct {
	// MinInterval is --min-sync-period: syncs are at least this far apart.
	MinInterval time.Duration
	// MaxInterval is --sync-period: a sync happens at least this often.
	MaxInterval time.Duration
	// RetryMin is the first retry delay after a failed sync; it doubles up
	// to MaxInterval. Default 1s.
	RetryMin time.Duration
	Clock    clock.WithTicker
	Metrics  *metrics.Metrics
	Health   *healthz.Health
	// AfterSync, if set, runs after every successful sync with what it
	// wrote (conntrack clean-up consumes the Diff).
	AfterSync func(*model.State, model.Diff)
	// Events, if set, receives the Warning Events about Service
	// conflicts and refused service ports.
	Events EventSink
}

// Runner owns time: it turns change notifications into bounded-frequency
// syncs of a Backend and records what they cost.
type Runner struct {
	backend Backend
	src     Source
	opts    RunnerOptions
	wake    chan struct{}

	mu      sync.Mutex
	pending pendingChanges

	// Owned by the Run goroutine.
	applied   *model.State                  // what the kernel has: the Runner's own map
	unwritten map[model.ServicePortKey]bool // changed, not yet written
	lastSync  time.Time
	retryAt   time.Time
	retryWait time.Duration
	dirty     bool
	conflicts conflicts
	held      held
}

type pendingChanges struct {
	services, endpoints int
	triggers            []time.Time
}

// NewRunner returns a Runner that syncs the States src gives it.
func NewRunner(b Backend, src Source, opts RunnerOptions) *Runner {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = time.Second
	}
	if opts.MaxInterval <= 0 {
		opts.MaxInterval = 30 * time.Second
	}
	return &Runner{backend: b, src: src, opts: opts, wake: make(chan struct{}, 1), held: held{},
		applied: &model.State{Services: map[model.ServicePortKey]*model.ServicePort{}}, unwritten: map[model.ServicePortKey]bool{}}
}

// OnChange records a change and asks for a sync; it never blocks. kind is
// "service", "endpoints" or "node"; triggerTime, when known, is when the
// change happened in the API (for network programming latency).
func (r *Runner) OnChange(kind string, triggerTime time.Time) {
	r.mu.Lock()
	switch kind {
	case "service":
		r.pending.services++
		if m := r.opts.Metrics; m != nil {
			m.ServicesTotal.Inc()
			m.ServicesPending.Set(float64(r.pending.services))
		}
	case "endpoints":
		r.pending.endpoints++
		if m := r.opts.Metrics; m != nil {
			m.EndpointsTotal.Inc()
			m.EndpointsPending.Set(float64(r.pending.endpoints))
		}
	}
	if !triggerTime.IsZero() {
		r.pending.triggers = append(r.pending.triggers, triggerTime)
	}
	r.mu.Unlock()
	if m := r.opts.Metrics; m != nil {
		m.LastQueued.SetToCurrentTime()
	}
	if h := r.opts.Health; h != nil {
		h.QueuedUpdate()
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run syncs once at start, then whenever asked (no more often than
// MinInterval), at least every MaxInterval, and retries failures with
// backoff, until ctx ends. It returns as soon as ctx has ended, also when a
// sync is due at that moment (syncOnce then does nothing, so the wait would
// stay at zero).
func (r *Runner) Run(ctx context.Context) {
	if h := r.opts.Health; h != nil {
		h.QueuedUpdate()
	}
	r.dirty = true
	for ctx.Err() == nil {
		wait := r.nextSync().Sub(r.opts.Clock.Now())
		if wait <= 0 {
			r.syncOnce(ctx)
			continue
		}
		t := r.opts.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.wake:
			t.Stop()
			r.dirty = true
		case <-t.C():
			if r.retryAt.IsZero() && !r.dirty {
				r.dirty = true // the periodic resync
			}
			r.syncOnce(ctx)
		}
	}
}

// nextSync is when the next sync is due: a retry, a wanted sync no sooner
// than MinInterval after the last, the retry of a refused port, or the
// periodic one.
func (r *Runner) nextSync() time.Time {
	periodic := r.lastSync.Add(r.opts.MaxInterval)
	next := periodic
	if !r.retryAt.IsZero() && r.retryAt.Before(next) {
		next = r.retryAt
	}
	if due := r.held.due(); !due.IsZero() && due.Before(next) {
		next = due
		if soonest := r.lastSync.Add(r.opts.MinInterval); next.Before(soonest) {
			next = soonest
		}
	}
	if r.dirty && r.retryAt.IsZero() {
		soonest := r.lastSync.Add(r.opts.MinInterval)
		if soonest.Before(next) {
			next = soonest
		}
	}
	return next
}

func (r *Runner) syncOnce(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	taken := r.pending
	r.pending = pendingChanges{}
	r.mu.Unlock()

	start := r.opts.Clock.Now()
	desired, changed := r.src.Next()
	for _, k := range changed {
		r.unwritten[k] = true
	}
	r.conflicts.report(desired.Conflicts, r.opts.Metrics, r.opts.Events)
	state, kept := r.held.withHeld(desired, r.applied, start)
	keys := r.toWrite(kept)
	diff := model.ComputeKeys(r.applied, state, keys)
	err := r.backend.Sync(ctx, state, diff)
	elapsed := r.opts.Clock.Since(start)
	r.lastSync = r.opts.Clock.Now()
	r.dirty = false
	var refused *RefusedError
	if err == nil || errors.As(err, &refused) {
		state, diff = r.written(state, diff, keys, kept, refused)
		err = nil
	}

	var stats SyncStats
	if sr, ok := r.backend.(StatsReporter); ok {
		stats = sr.LastSyncStats()
	}
	m := r.opts.Metrics
	if err != nil {
		r.requeue(taken)
		if r.retryWait == 0 {
			r.retryWait = r.opts.RetryMin
		} else {
			r.retryWait = min(2*r.retryWait, r.opts.MaxInterval)
		}
		r.retryAt = r.lastSync.Add(r.retryWait)
		if m != nil {
			family := FailedFamily(err)
			m.SyncFailures.WithLabelValues(family).Inc()
			if m.PartialFailures != nil && !stats.Full {
				m.PartialFailures.WithLabelValues(family).Inc()
			}
			m.Syncs.WithLabelValues("error").Inc()
		}
		klog.ErrorS(err, "Sync failed; the kernel keeps the previous rules", "mode", r.backend.Mode(), "retryIn", r.retryWait)
		return
	}
	r.retryAt, r.retryWait = time.Time{}, 0
	if r.opts.AfterSync != nil {
		r.opts.AfterSync(state, diff)
	}
	if m != nil {
		m.SyncDuration.Observe(elapsed.Seconds())
		result := "partial"
		switch {
		case stats.Full:
			result = "full"
			m.SyncFullDuration.Observe(elapsed.Seconds())
		case stats.Skipped:
			result = "skipped"
		default:
			m.SyncPartialDuration.Observe(elapsed.Seconds())
		}
		m.Syncs.WithLabelValues(result).Inc()
		m.KernelObjects.Add(float64(stats.KernelOps))
		if stats.DriftRepairs > 0 {
			m.DriftRepairs.WithLabelValues(r.backend.Mode()).Add(float64(stats.DriftRepairs))
		}
		m.LastSync.SetToCurrentTime()
		m.ServicesPending.Set(0)
		m.EndpointsPending.Set(0)
		now := r.opts.Clock.Now()
		for _, t := range taken.triggers {
			if d := now.Sub(t); d >= 0 {
				m.NetworkProgramming.Observe(d.Seconds())
			}
		}
	}
	if h := r.opts.Health; h != nil {
		r.mu.Lock()
		stillPending := r.pending.services+r.pending.endpoints > 0
		r.mu.Unlock()
		if !stillPending {
			h.Updated()
		}
	}
	klog.V(2).InfoS("Synced", "mode", r.backend.Mode(), "servicePorts", len(state.Services), "full", stats.Full,
		"kernelObjects", stats.KernelOps, "changed", len(diff.Added)+len(diff.Updated)+len(diff.Removed), "elapsed", elapsed)
}

// toWrite lists the ports a sync must look at: those changed since the
// last successful write, and the held ones it no longer keeps back.
func (r *Runner) toWrite(kept map[model.ServicePortKey]bool) []model.ServicePortKey {
	keys := make([]model.ServicePortKey, 0, len(r.unwritten)+len(r.held))
	for k := range r.unwritten {
		keys = append(keys, k)
	}
	for k := range r.held {
		if !kept[k] && !r.unwritten[k] {
			keys = append(keys, k)
		}
	}
	return keys
}

// written records that the kernel took the ports keys of state, but for
// those refused names (nil: all of them), settles the held ports, and
// returns what the kernel now has and how that differs from before.
func (r *Runner) written(state *model.State, diff model.Diff, keys []model.ServicePortKey, kept map[model.ServicePortKey]bool,
	refused *RefusedError) (*model.State, model.Diff) {
	var again []model.ServicePortKey
	if refused != nil {
		again = refused.Ports
		state = r.refuse(refused, state, kept)
		diff = model.ComputeKeys(r.applied, state, keys)
	}
	for _, k := range keys {
		if sp := state.Services[k]; sp != nil {
			r.applied.Services[k] = sp
		} else {
			delete(r.applied.Services, k)
		}
	}
	clear(r.unwritten)
	for _, k := range r.held.settle(kept, again) {
		klog.InfoS("Programmed a service port the kernel had refused", "servicePort", k.String())
	}
	if m := r.opts.Metrics; m != nil {
		m.RefusedPorts.Set(float64(len(r.held)))
	}
	return state, diff
}

// refuse records the ports the kernel refused in a sync of written,
// reports those refused for the first time, and returns what the kernel
// now has: written, with the refused ports as they were. A port kept back
// from this sync was not tried: a backend naming it again (one that keeps
// a refused port out until it changes) changes neither its refused value
// nor its backoff.
func (r *Runner) refuse(e *RefusedError, written *model.State, kept map[model.ServicePortKey]bool) *model.State {
	tried := slices.DeleteFunc(slices.Clone(e.Ports), func(k model.ServicePortKey) bool { return kept[k] })
	applied, fresh := r.held.refuse(tried, written, r.applied, r.lastSync, r.opts.RetryMin, r.opts.MaxInterval)
	for _, k := range tried {
		if hp := r.held[k]; hp != nil {
			klog.V(2).InfoS("Service port refused by the kernel; retrying later", "servicePort", k.String(), "retryIn", hp.wait)
		}
	}
	for _, k := range fresh {
		klog.ErrorS(e.Err, "The kernel refused a service port's rules; everything else is programmed, this port is retried with backoff",
			"servicePort", k.String(), "mode", r.backend.Mode())
		if r.opts.Events != nil {
			r.opts.Events.Warn(k.Service(), ReasonKernelRefused, fmt.Sprintf(
				"the kernel refused the %s rules of port %s (%v); other ports and Services are programmed, this one is retried with backoff",
				r.backend.Mode(), k, e.Err))
		}
	}
	return applied
}

// requeue puts changes of a failed sync back so their latency is measured
// when they finally land.
func (r *Runner) requeue(p pendingChanges) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending.services += p.services
	r.pending.endpoints += p.endpoints
	r.pending.triggers = append(p.triggers, r.pending.triggers...)
}
