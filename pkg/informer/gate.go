package informer

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// HoldDuringOutages makes the GET requests of clients built from cfg (the
// watches' lists and watches) wait while the apiserver cannot be reached,
// and go again as soon as it answers.
//
// Without it, client-go's reflectors meet a stopped apiserver with their
// own backoff: 0.8 s doubling to 30 s with up to 100 % jitter, per watch,
// with nothing to shorten it when the apiserver returns. After a 10 s
// outage the next attempt could be 6–25 s away (17.9 s was seen), and every
// change made meanwhile waited for it. Here one probe per client asks the
// apiserver's /readyz, first after 0.2 s and then at most every second
// (jittered by up to 20 %), while it cannot be reached; the waiting
// requests go the moment it answers. An unreachable apiserver thus gets one
// cheap request a second from each node instead of one list or watch per
// watch at growing intervals; an apiserver that answers with errors (429,
// 403, 500) is left to client-go's retries and the reflectors' backoff.
func HoldDuringOutages(cfg *rest.Config) {
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return newGate(rt, clock.RealClock{}, klog.Background().WithName("apiserver"))
	})
}

// gate is the http.RoundTripper of HoldDuringOutages.
type gate struct {
	next   http.RoundTripper
	clock  clock.Clock
	logger klog.Logger

	mu     sync.Mutex
	closed chan struct{} // non-nil during an outage; closed when it ends
	since  time.Time
}

// Probe delays: the first, and the most, before jitter.
const (
	firstProbe = 200 * time.Millisecond
	maxProbe   = time.Second
)

func newGate(next http.RoundTripper, c clock.Clock, logger klog.Logger) *gate {
	return &gate{next: next, clock: c, logger: logger}
}

// RoundTrip sends req; a GET that finds the apiserver unreachable waits
// for the end of the outage and is sent again.
func (g *gate) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet {
		return g.next.RoundTrip(req)
	}
	for {
		if err := g.wait(req.Context()); err != nil {
			return nil, err
		}
		resp, err := g.next.RoundTrip(req)
		if req.Context().Err() != nil || !unreachable(resp, err) {
			return resp, err
		}
		why := "HTTP " + http.StatusText(statusOf(resp))
		if err != nil {
			why = err.Error()
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
		}
		g.close(req, why)
	}
}

// wait returns once no outage is in progress, or when ctx ends.
func (g *gate) wait(ctx context.Context) error {
	g.mu.Lock()
	ch := g.closed
	g.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close starts an outage, unless one is in progress, and its probe.
func (g *gate) close(req *http.Request, why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed != nil {
		return
	}
	g.closed = make(chan struct{})
	g.since = g.clock.Now()
	g.logger.Info("The apiserver cannot be reached; watches wait until it answers /readyz", "host", req.URL.Host, "error", why)
	u := *req.URL
	u.Path, u.RawPath, u.RawQuery = "/readyz", "", ""
	probe := &http.Request{Method: http.MethodGet, URL: &u, Header: req.Header.Clone(), Host: req.Host}
	go g.probe(probe)
}

// probe asks /readyz until the apiserver answers, then opens the gate.
func (g *gate) probe(req *http.Request) {
	delay := firstProbe
	for {
		<-g.clock.After(time.Duration(float64(delay) * (1 - 0.2*rand.Float64())))
		delay = min(2*delay, maxProbe)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := g.next.RoundTrip(req.WithContext(ctx))
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
		}
		cancel()
		// Any answer but an error of the server means it serves: /readyz
		// is 200 when ready, a 4xx when this client may not read it.
		if err == nil && resp.StatusCode < 500 {
			g.mu.Lock()
			close(g.closed)
			g.closed = nil
			g.logger.Info("The apiserver answers again", "host", req.URL.Host, "unreachableFor", g.clock.Since(g.since).Round(time.Millisecond))
			g.mu.Unlock()
			return
		}
	}
}

// unreachable tells an apiserver that cannot be reached (no connection,
// one cut before the answer, or a proxy in front saying so) from one that
// answers, if only with an error.
func unreachable(resp *http.Response, err error) bool {
	if err != nil {
		var ne net.Error
		return utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) || utilnet.IsProbableEOF(err) ||
			utilnet.IsHTTP2ConnectionLost(err) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
			errors.As(err, &ne) && ne.Timeout()
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}
