// Package balance measures how each Service's established TCP connections
// spread over its endpoints, from the node's conntrack table, and warns when
// a Service looks pinned: endpoints that became ready a while ago still hold
// no connection while most connections were opened before them — the gRPC
// and HTTP/2 case, where long-lived connections stay on the Pods that
// existed when clients connected.
//
// The collector walks the conntrack table on its own goroutine at a fixed
// interval (a bounded periodic dump, not an event subscription: see the
// README for the measurement behind that choice). The sync path only hands
// it each programmed State and Diff, which costs the changed ports.
package balance

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
)

// Config tunes the collector; zero fields take the defaults.
type Config struct {
	// Interval is how often the conntrack table is walked (default 30s).
	Interval time.Duration
	// PinnedAfter is how long an endpoint must have been ready, holding no
	// connection, before its Service is reported pinned (default 5m).
	PinnedAfter time.Duration
	// EndpointSeries exports per-endpoint connection counts for every
	// Service; without it only the TopK most imbalanced Services get them.
	EndpointSeries bool
	// TopK is how many of the most imbalanced Services get per-endpoint
	// series (0: none).
	TopK int
	// EventEvery is the least time between two Events on one Service
	// (default 30m).
	EventEvery time.Duration
	// MaxEntries bounds one walk: entries past it are not read (default
	// 2^21, beyond any nf_conntrack_max default).
	MaxEntries int
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = 30 * time.Second
	}
	if c.PinnedAfter <= 0 {
		c.PinnedAfter = 5 * time.Minute
	}
	if c.EventEvery <= 0 {
		c.EventEvery = 30 * time.Minute
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 1 << 21
	}
}

// Source walks the conntrack table: it calls fn with each entry of every
// family (the entry is reused between calls) until fn returns false.
type Source func(fn func(*conntrack.Entry) bool) error

// KernelSource walks r's table, IPv4 then IPv6.
func KernelSource(r *conntrack.Reader) Source {
	return func(fn func(*conntrack.Entry) bool) error {
		more := true
		for _, f := range []model.IPFamily{model.IPv4, model.IPv6} {
			if !more {
				break
			}
			err := r.Dump(f, func(e *conntrack.Entry) {
				if more {
					more = fn(e)
				}
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
}

// Recorder posts a Warning Event on a Service.
type Recorder interface {
	Warn(svc model.NamespacedName, reason, message string)
}

// Collector is the connection-balance collector. Create it with New, feed
// it with Programmed after each sync, run it with Run.
type Collector struct {
	cfg    Config
	source Source
	rec    Recorder
	clock  clock.WithTicker
	ready  *readiness
	events *eventLimiter

	// walking serialises walks (Run's, and Refresh's on demand) and
	// guards what they own.
	walking   sync.Mutex
	index     *index
	indexed   *model.State
	firstSeen map[connKey]seen
	gen       uint32

	mu     sync.Mutex
	last   scanResult
	scanAt time.Time
}

// connKey identifies one conntrack entry across walks: its kernel id and
// client port (two entries rarely share both), packed for cheap hashing.
type connKey uint64

func keyOf(e *conntrack.Entry) connKey { return connKey(e.ID)<<16 | connKey(e.Orig.Src.Port()) }

type seen struct {
	at  time.Time
	gen uint32
}

// New returns a collector reading from source; rec may be nil (no Events).
func New(cfg Config, source Source, rec Recorder, c clock.WithTicker) *Collector {
	cfg.defaults()
	if c == nil {
		c = clock.RealClock{}
	}
	return &Collector{cfg: cfg, source: source, rec: rec, clock: c, ready: newReadiness(),
		events: newEventLimiter(cfg.EventEvery), firstSeen: map[connKey]seen{}}
}

// Programmed tells the collector what a successful sync programmed. It
// is called on the sync path and costs only the changed ports.
func (c *Collector) Programmed(s *model.State, d model.Diff) {
	c.ready.note(s, d, c.clock.Now())
}

// ReadStateFrom makes the collector read the programmed State through get
// when it walks, instead of keeping the State Programmed hands it: for a
// caller whose State changes in place with the next sync, get returns a
// copy that does not (and returns the same pointer until it changes).
// Programmed still notes what changed, on the caller's goroutine.
func (c *Collector) ReadStateFrom(get func() *model.State) {
	c.ready.mu.Lock()
	c.ready.get = get
	c.ready.mu.Unlock()
}

// Run walks the table every Interval until ctx ends.
func (c *Collector) Run(ctx context.Context) {
	t := c.clock.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		if err := c.Scan(); err != nil {
			klog.ErrorS(err, "Connection balance: could not read the conntrack table")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-c.ready.first:
		}
	}
}

// Scan walks the table once: it counts each Service's established
// connections per endpoint, updates the metrics' view and posts Events
// for pinned Services.
func (c *Collector) Scan() error {
	c.walking.Lock()
	defer c.walking.Unlock()
	s := c.ready.take()
	if s == nil {
		return nil // nothing programmed yet
	}
	if s != c.indexed {
		c.index, c.indexed = buildIndex(s, c.ready.since), s
	}
	now := c.clock.Now()
	c.gen++
	res := newScan(c.index, now, c.cfg.PinnedAfter)
	n := 0
	err := c.source(func(e *conntrack.Entry) bool {
		n++
		if !e.Established() {
			return n < c.cfg.MaxEntries
		}
		svc, ep, ok := c.index.lookup(e)
		if !ok {
			return n < c.cfg.MaxEntries
		}
		k := keyOf(e)
		f, ok := c.firstSeen[k]
		if !ok {
			f.at = now
			if !e.Start.IsZero() && e.Start.Before(now) {
				f.at = e.Start
			}
		}
		f.gen = c.gen
		c.firstSeen[k] = f
		res.add(svc, ep, f.at)
		return n < c.cfg.MaxEntries
	})
	for k, f := range c.firstSeen {
		if f.gen != c.gen {
			delete(c.firstSeen, k)
		}
	}
	if err != nil {
		return err
	}
	if n >= c.cfg.MaxEntries {
		klog.InfoS("Connection balance: the conntrack walk stopped at its bound", "entries", n)
	}
	res.entries, res.took = n, c.clock.Since(now)
	res.finish()
	c.mu.Lock()
	c.last, c.scanAt = res, now
	c.mu.Unlock()
	c.warn(res, now)
	return nil
}

// Refresh walks the table now unless the last walk is younger than maxAge
// and nothing was programmed since: `proxyd explain svc` asks for a view
// that includes a Service created a moment ago, at the cost of one walk
// per maxAge at most while nothing changes.
func (c *Collector) Refresh(maxAge time.Duration) error {
	c.mu.Lock()
	fresh := !c.scanAt.IsZero() && c.clock.Since(c.scanAt) < maxAge
	c.mu.Unlock()
	fresh = fresh && !c.ready.pending()
	if fresh {
		return nil
	}
	return c.Scan()
}

// Spread returns the last walk's view of one Service, and when it was
// taken; ok is false when the Service was not programmed at that walk.
func (c *Collector) Spread(name model.NamespacedName) (sp Spread, at time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sp, ok = c.last.find(name)
	return sp, c.scanAt, ok
}

// LastScan returns when the table was last walked and how many entries it
// had (zero time: never).
func (c *Collector) LastScan() (time.Time, int, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.scanAt, c.last.entries, c.last.took
}

func (c *Collector) warn(res scanResult, now time.Time) {
	if c.rec == nil {
		return
	}
	for _, s := range res.services {
		if s.Pinned == "" || !c.events.allow(s.Service, now) {
			continue
		}
		c.rec.Warn(s.Service, "ConnectionsPinned", s.Pinned)
		klog.InfoS("Service looks pinned", "service", s.Service, "why", s.Pinned)
	}
}
