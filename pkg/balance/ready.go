package balance

import (
	"net/netip"
	"sync"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// readiness remembers when proxyd first programmed each endpoint as one
// that new connections may reach. The API has no "ready since" time (an
// EndpointSlice condition carries no timestamp), so this is the honest
// source the node has: the sync that first made it a candidate. Endpoints
// already candidates in the first State proxyd programmed are marked
// atStart, since they may have been ready long before.
type readiness struct {
	mu    sync.Mutex
	state *model.State
	// get, when set, returns the State to read instead of state (see
	// Collector.ReadStateFrom).
	get     func() *model.State
	started bool
	// first is signalled when the first State is noted, so that the
	// collector walks at once instead of an interval later.
	first chan struct{}
	// changed holds, per service port changed since the collector last
	// looked, when the change was programmed.
	changed map[model.ServicePortKey]time.Time

	// Owned by the collector's goroutine.
	since map[model.ServicePortKey]map[netip.Addr]readyMark
}

type readyMark struct {
	at      time.Time
	atStart bool
}

func newReadiness() *readiness {
	return &readiness{changed: map[model.ServicePortKey]time.Time{}, since: map[model.ServicePortKey]map[netip.Addr]readyMark{},
		first: make(chan struct{}, 1)}
}

// note records a programmed State and what changed in it; it costs only
// the changed ports, so the sync path that calls it stays fast.
func (r *readiness) note(s *model.State, d model.Diff, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == nil {
		r.first <- struct{}{}
	}
	r.state = s
	for _, keys := range [][]model.ServicePortKey{d.Added, d.Updated, d.Removed} {
		for _, k := range keys {
			if _, ok := r.changed[k]; !ok {
				r.changed[k] = now
			}
		}
	}
}

// take returns the latest State and applies the changes noted since the
// last call to the ready-since times.
func (r *readiness) take() *model.State {
	r.mu.Lock()
	s, changed, first := r.state, r.changed, !r.started
	if s == nil {
		r.mu.Unlock()
		return nil
	}
	r.started = true
	r.changed = map[model.ServicePortKey]time.Time{}
	select {
	case <-r.first: // this walk is the one the first State asked for
	default:
	}
	get := r.get
	r.mu.Unlock()
	if get != nil {
		if s = get(); s == nil {
			return nil
		}
	}
	for k, at := range changed {
		sp := s.Services[k]
		if sp == nil {
			delete(r.since, k)
			continue
		}
		old := r.since[k]
		next := make(map[netip.Addr]readyMark, len(sp.ClusterEndpoints))
		for _, ip := range candidateIPs(sp) {
			m, ok := old[ip]
			if !ok {
				m = readyMark{at: at, atStart: first}
			}
			next[ip] = m
		}
		r.since[k] = next
	}
	return s
}

// pending reports whether a State newer than the one last taken was noted.
func (r *readiness) pending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.changed) > 0
}

// candidateIPs are the addresses of the endpoints this node may send new
// connections of sp to: the ClusterIP's choice and the external one.
func candidateIPs(sp *model.ServicePort) []netip.Addr {
	out := make([]netip.Addr, 0, len(sp.ClusterEndpoints))
	seen := make(map[netip.Addr]bool, len(sp.ClusterEndpoints))
	for _, eps := range [][]model.Endpoint{sp.ClusterEndpoints, sp.ExternalEndpoints} {
		for _, e := range eps {
			if e.Ready && !seen[e.IP] {
				seen[e.IP] = true
				out = append(out, e.IP)
			}
		}
	}
	return out
}
