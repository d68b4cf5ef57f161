package informer

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"
)

// fakeAPIServer answers like an apiserver that is down (connection
// refused) or up, and counts the requests of each path.
type fakeAPIServer struct {
	mu    sync.Mutex
	up    bool
	calls map[string]int
	// status is the answer while up (200 unless set).
	status int
}

func (f *fakeAPIServer) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[req.URL.Path]++
	if !f.up {
		return nil, &netOpError{syscall.ECONNREFUSED}
	}
	code := f.status
	if code == 0 {
		code = http.StatusOK
	}
	return &http.Response{StatusCode: code, Body: io.NopCloser(strings.NewReader("ok")), Request: req}, nil
}

func (f *fakeAPIServer) set(up bool) {
	f.mu.Lock()
	f.up = up
	f.mu.Unlock()
}

func (f *fakeAPIServer) count(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[path]
}

// netOpError wraps an errno as the dialer does.
type netOpError struct{ errno syscall.Errno }

func (e *netOpError) Error() string { return "dial tcp 127.0.0.1:6443: " + e.errno.Error() }
func (e *netOpError) Unwrap() error { return e.errno }

func get(t *testing.T, ctx context.Context, rt http.RoundTripper, method string) <-chan error {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, "https://127.0.0.1:6443/api/v1/services?watch=true", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		resp, err := rt.RoundTrip(req)
		if resp != nil {
			resp.Body.Close()
		}
		done <- err
	}()
	return done
}

// stepUntil advances the fake clock a second at a time until done reports.
func stepUntil(t *testing.T, clock *clocktesting.FakeClock, done <-chan error) error {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return err
		default:
		}
		if clock.HasWaiters() {
			clock.Step(time.Second)
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the request did not return")
	return nil
}

func TestAGetWaitsOutAnOutageAndGoesWhenTheAPIServerAnswers(t *testing.T) {
	api := &fakeAPIServer{calls: map[string]int{}}
	clock := clocktesting.NewFakeClock(time.Now())
	g := newGate(api, clock, klog.Background())
	done := get(t, context.Background(), g, http.MethodGet)

	// Down: the probe keeps asking /readyz, the GET is not sent again.
	for api.count("/readyz") < 3 {
		select {
		case err := <-done:
			t.Fatalf("the GET returned during the outage: %v", err)
		default:
		}
		if clock.HasWaiters() {
			clock.Step(time.Second)
		}
		time.Sleep(time.Millisecond)
	}
	if n := api.count("/api/v1/services"); n != 1 {
		t.Errorf("the GET was sent %d times during the outage, want once", n)
	}
	api.set(true)
	if err := stepUntil(t, clock, done); err != nil {
		t.Errorf("after the outage the GET failed: %v", err)
	}
	if n := api.count("/api/v1/services"); n != 2 {
		t.Errorf("the GET was sent %d times, want twice (before and after the outage)", n)
	}
	// Open again: the next GET goes straight through.
	if err := <-get(t, context.Background(), g, http.MethodGet); err != nil {
		t.Errorf("a GET after the outage: %v", err)
	}
}

func TestOnlyGetsAreHeldAndAnswersPassThrough(t *testing.T) {
	tests := []struct {
		name   string
		up     bool
		status int
		method string
		want   func(error) bool
	}{
		{name: "a POST to an unreachable apiserver fails at once", method: http.MethodPost,
			want: func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }},
		{name: "a GET answered with 500 is returned as is", up: true, status: 500, method: http.MethodGet,
			want: func(err error) bool { return err == nil }},
		{name: "a GET answered with 403 is returned as is", up: true, status: 403, method: http.MethodGet,
			want: func(err error) bool { return err == nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := &fakeAPIServer{calls: map[string]int{}, up: tt.up, status: tt.status}
			g := newGate(api, clocktesting.NewFakeClock(time.Now()), klog.Background())
			select {
			case err := <-get(t, context.Background(), g, tt.method):
				if !tt.want(err) {
					t.Errorf("error = %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the request was held")
			}
			if n := api.count("/readyz"); n != 0 {
				t.Errorf("%d probes, want none", n)
			}
		})
	}
}

func TestAHeldGetReturnsWhenItsContextEnds(t *testing.T) {
	api := &fakeAPIServer{calls: map[string]int{}}
	clock := clocktesting.NewFakeClock(time.Now())
	g := newGate(api, clock, klog.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := get(t, ctx, g, http.MethodGet)
	for !clock.HasWaiters() { // the probe waits: the GET is held
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a held GET outlived its context")
	}
}
