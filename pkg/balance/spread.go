package balance

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// Spread is one Service's established connections through this node, per
// endpoint, at one walk of the conntrack table.
type Spread struct {
	Service model.NamespacedName `json:"service"`
	// Total is the number of established TCP connections.
	Total int `json:"total"`
	// MaxShare is the largest fraction of Total that one endpoint holds.
	MaxShare float64 `json:"maxShare"`
	// Idle is how many candidate endpoints hold no connection.
	Idle      int              `json:"idleEndpoints"`
	Endpoints []EndpointSpread `json:"endpoints"`
	// Pinned, when not empty, says why the Service looks pinned.
	Pinned string `json:"pinned,omitempty"`
}

// EndpointSpread is one endpoint's part of a Spread.
type EndpointSpread struct {
	IP          netip.Addr `json:"ip"`
	Connections int        `json:"connections"`
	// Candidate: ready, and new connections from this node may reach it.
	Candidate bool `json:"candidate"`
	// ReadySince is when proxyd first programmed it as a candidate;
	// ReadyAtStart means it already was in the first State proxyd
	// programmed, so it may have been ready for longer.
	ReadySince   time.Time `json:"readySince,omitzero"`
	ReadyAtStart bool      `json:"readyAtStart,omitempty"`
	// Oldest is when its oldest connection was first seen (or started,
	// when the kernel keeps conntrack timestamps).
	Oldest time.Time `json:"oldest,omitzero"`
}

// imbalance is how far the busiest endpoint is above an even share: 0 for
// a perfect spread, approaching 1 when one of many endpoints holds all.
func (s *Spread) imbalance() float64 {
	n := 0
	for _, e := range s.Endpoints {
		if e.Candidate {
			n++
		}
	}
	if n == 0 || s.Total == 0 {
		return 0
	}
	return s.MaxShare - 1/float64(n)
}

// scanResult is one walk's Spreads, for Services with connections.
type scanResult struct {
	services []Spread
	entries  int
	took     time.Duration

	ix          *index
	acc         map[*service]*acc
	now         time.Time
	pinnedAfter time.Duration
}

// acc accumulates one Service during a walk.
type acc struct {
	svc    *service
	counts []int
	oldest []time.Time
	// olderThan[i] counts the connections first seen before endpoint i
	// became ready, for the endpoints that may be reported idle (ready
	// long enough, readiness seen); -1 for the others.
	olderThan []int
	eligible  bool // some olderThan is counted
}

func newScan(ix *index, now time.Time, pinnedAfter time.Duration) scanResult {
	return scanResult{ix: ix, acc: map[*service]*acc{}, now: now, pinnedAfter: pinnedAfter}
}

func (r *scanResult) add(svc *service, ep int, first time.Time) {
	a := r.acc[svc]
	if a == nil {
		a = &acc{svc: svc, counts: make([]int, len(svc.ips)), oldest: make([]time.Time, len(svc.ips)),
			olderThan: make([]int, len(svc.ips))}
		for i, m := range svc.since {
			if !svc.candidate[i] || m.atStart || m.at.IsZero() || r.now.Sub(m.at) < r.pinnedAfter {
				a.olderThan[i] = -1
				continue
			}
			a.eligible = true
		}
		r.acc[svc] = a
	}
	a.counts[ep]++
	if a.oldest[ep].IsZero() || first.Before(a.oldest[ep]) {
		a.oldest[ep] = first
	}
	if !a.eligible {
		return
	}
	for i, n := range a.olderThan {
		if n >= 0 && first.Before(svc.since[i].at) {
			a.olderThan[i]++
		}
	}
}

// finish turns the accumulators into Spreads, sorted by Service.
func (r *scanResult) finish() {
	for _, a := range r.acc {
		r.services = append(r.services, a.spread(r.pinnedAfter))
	}
	slices.SortFunc(r.services, func(a, b Spread) int { return compareNames(a.Service, b.Service) })
	r.acc = nil
}

// find returns the Spread of name: the walk's, or all zeros for a known
// Service without connections.
func (r *scanResult) find(name model.NamespacedName) (Spread, bool) {
	if i, ok := slices.BinarySearchFunc(r.services, name, func(s Spread, n model.NamespacedName) int { return compareNames(s.Service, n) }); ok {
		return r.services[i], true
	}
	if r.ix == nil {
		return Spread{}, false
	}
	i, ok := slices.BinarySearchFunc(r.ix.services, name, func(s *service, n model.NamespacedName) int { return compareNames(s.name, n) })
	if !ok {
		return Spread{}, false
	}
	svc := r.ix.services[i]
	a := &acc{svc: svc, counts: make([]int, len(svc.ips)), oldest: make([]time.Time, len(svc.ips)), olderThan: make([]int, len(svc.ips))}
	return a.spread(r.pinnedAfter), true
}

func (a *acc) spread(pinnedAfter time.Duration) Spread {
	s := Spread{Service: a.svc.name}
	maxCount := 0
	for i, ip := range a.svc.ips {
		e := EndpointSpread{IP: ip, Connections: a.counts[i], Candidate: a.svc.candidate[i], Oldest: a.oldest[i]}
		if e.Candidate {
			e.ReadySince, e.ReadyAtStart = a.svc.since[i].at, a.svc.since[i].atStart
			if e.Connections == 0 {
				s.Idle++
			}
		}
		s.Total += e.Connections
		maxCount = max(maxCount, e.Connections)
		s.Endpoints = append(s.Endpoints, e)
	}
	slices.SortFunc(s.Endpoints, func(a, b EndpointSpread) int { return a.IP.Compare(b.IP) })
	if s.Total > 0 {
		s.MaxShare = float64(maxCount) / float64(s.Total)
	}
	s.Pinned = pinnedReason(&s, a, pinnedAfter)
	return s
}

// pinnedReason says why s looks pinned, or "" when it does not. A Service
// is pinned when some candidate endpoint that proxyd saw become ready at
// least pinnedAfter ago holds no connection, while most of the Service's
// connections were opened before the first such endpoint became ready:
// they were already there, and stayed where they were. Connections opened
// since (short-lived traffic) spread over the new endpoints and keep the
// Service from being reported.
func pinnedReason(s *Spread, a *acc, after time.Duration) string {
	first, older := -1, 0
	var idle []netip.Addr
	for i, ip := range a.svc.ips {
		if a.olderThan[i] < 0 || a.counts[i] > 0 {
			continue
		}
		idle = append(idle, ip)
		if first < 0 || a.svc.since[i].at.Before(a.svc.since[first].at) {
			first, older = i, a.olderThan[i]
		}
	}
	if first < 0 || older == 0 || 2*older < s.Total {
		return ""
	}
	holders := 0
	for _, n := range a.counts {
		if n > 0 {
			holders++
		}
	}
	slices.SortFunc(idle, netip.Addr.Compare)
	names := make([]string, len(idle))
	for i, ip := range idle {
		names[i] = ip.String()
	}
	return fmt.Sprintf("%d ready endpoints (%s) have held no connection for at least %v since they became ready, "+
		"while %d of %d established connections were opened before that and stay on %d endpoints: long-lived "+
		"connections (HTTP/2, gRPC) keep the Pods they started on until clients reconnect",
		len(idle), strings.Join(names, ", "), after, older, s.Total, holders)
}
