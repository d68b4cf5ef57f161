// Package healthz serves /healthz and /livez with kube-proxy's semantics:
// the proxy is unhealthy when a change was queued and not synced within
// the timeout (twice the sync period).
package healthz

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Health tracks queued and completed syncs.
type Health struct {
	clock   clock.PassiveClock
	timeout time.Duration

	mu           sync.Mutex
	lastUpdated  time.Time
	oldestQueued time.Time
	retiring     bool
	observe      func(path string, code int)
}

// Observe makes every answer of /healthz and /livez call f with the path
// and status code (kube-proxy's kubeproxy_proxy_{healthz,livez}_total).
func (h *Health) Observe(f func(path string, code int)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.observe = f
}

// New returns a Health that fails once a queued update waits longer than
// timeout.
func New(c clock.PassiveClock, timeout time.Duration) *Health {
	return &Health{clock: c, timeout: timeout}
}

// SetNodeRetiring records whether the node is being deleted or drained by
// the cluster autoscaler; /healthz (not /livez) answers 503 meanwhile, so
// load balancers stop sending new connections to the node.
func (h *Health) SetNodeRetiring(retiring bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.retiring = retiring
}

// QueuedUpdate records that a sync is wanted.
func (h *Health) QueuedUpdate() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestQueued.IsZero() {
		h.oldestQueued = h.clock.Now()
	}
}

// Updated records a successful sync of everything queued so far.
func (h *Health) Updated() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = h.clock.Now()
	h.oldestQueued = time.Time{}
}

// Healthy reports whether no queued update is overdue, and the time of the
// last successful sync.
func (h *Health) Healthy() (bool, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestQueued.IsZero() {
		return true, h.lastUpdated
	}
	return h.clock.Since(h.oldestQueued) < h.timeout, h.lastUpdated
}

// status is kube-proxy's /healthz and /livez body, field for field.
type status struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	Healthy      bool      `json:"healthy"`
}

// Handler serves /healthz and /livez.
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	serve := func(withEligibility bool) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			ok, last := h.Healthy()
			now := h.clock.Now()
			st := status{LastUpdated: last, CurrentTime: now}
			if withEligibility {
				h.mu.Lock()
				eligible := !h.retiring
				h.mu.Unlock()
				st.NodeEligible = &eligible
				ok = ok && eligible
			}
			st.Healthy = ok
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			code := http.StatusOK
			if !ok {
				code = http.StatusServiceUnavailable
			}
			h.mu.Lock()
			observe := h.observe
			h.mu.Unlock()
			if observe != nil {
				observe(req.URL.Path, code)
			}
			if !ok {
				w.WriteHeader(code)
			} else {
				// As kube-proxy: a healthy proxy reports a recent
				// lastUpdated even when nothing needed a sync.
				st.LastUpdated = now
			}
			_ = json.NewEncoder(w).Encode(st)
		}
	}
	mux.HandleFunc("/healthz", serve(true))
	mux.HandleFunc("/livez", serve(false))
	return mux
}
