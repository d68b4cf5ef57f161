//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// balanceArgs make the collector quick enough for a test: a walk a
// second, pinned after 8 s.
var balanceArgs = []string{"--balance-interval=1s", "--balance-pinned-after=8s", "--balance-event-interval=1h", "--balance-top-k=5"}

// TestConnectionBalance is the gRPC case: long-lived connections opened
// while a Service had 3 Pods stay there after it scales to 6, which the
// metrics show and a Warning Event reports; short-lived connections
// spread over the new Pods and raise no Event. The collector reads
// conntrack, the same in every mode; it runs here in nftables mode, the
// DaemonSet's.
func TestConnectionBalance(t *testing.T) {
	e := needEnv(t)
	dp := dataplanes[0]
	dp.args = append(append([]string{}, dp.args...), balanceArgs...)
	e.startDataplane(t, dp)
	t.Cleanup(func() { _, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, "conntrack", "-F") })
	tcp := []svcPort{{"tcp", v1.ProtocolTCP, 80}}
	target := []svcPort{{"tcp", v1.ProtocolTCP, 8080}}
	ready := func(n int) []endpoint {
		var out []endpoint
		for _, p := range e.lab.Pods[:n] {
			out = append(out, endpoint{p, true})
		}
		return out
	}

	t.Run("six long-lived connections stay on the first three Pods after a scale to six: metrics and an Event say so", func(t *testing.T) {
		const vip = "10.96.0.62"
		addr := vip + ":80"
		e.createService(t, "pinned", vip, nil, tcp...)
		e.createSlice(t, e.slice("pinned-1", "pinned", ready(3), target...))
		e.waitAnswers(t, "the VIP answers", addr, 1)
		// Two on each Pod: random balancing alone may leave one of the
		// three without a connection before the scale.
		held, total := map[string]int{}, 0
		for tries := 0; total < 6; tries++ {
			if tries == 200 {
				t.Fatalf("200 connections did not put two on each Pod: %v", held)
			}
			c, name := e.hold(t, e.lab.ClientNS, addr)
			if held[name] == 2 {
				_ = c.Close()
				continue
			}
			t.Cleanup(func() { _ = c.Close() })
			held[name]++
			total++
		}
		t.Logf("six connections held by %v", held)
		e.eventually(t, 15*time.Second, "the collector sees the six connections", func() error {
			return e.serviceGauge(t, "proxyd_service_established_connections", "pinned", 6)
		})
		e.updateSlice(t, e.slice("pinned-1", "pinned", ready(6), target...))
		e.eventually(t, 15*time.Second, "three ready endpoints without a connection", func() error {
			return e.serviceGauge(t, "proxyd_service_endpoints_without_connections", "pinned", 3)
		})
		took := e.eventually(t, 40*time.Second, "a ConnectionsPinned Event on the Service", func() error {
			return e.pinnedEvents(t, "pinned", 1)
		})
		t.Logf("Event after %v", took.Round(time.Second))
		body := e.metrics(t)
		for _, p := range e.lab.Pods[3:6] {
			want := fmt.Sprintf(`proxyd_endpoint_established_connections{endpoint=%q,namespace="default",service="pinned"} 0`, p.IP)
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
		text := e.runExplain(t, "svc", "default/pinned")
		t.Logf("proxyd explain svc default/pinned:\n%s", text)
		if !strings.Contains(text, "!!! PINNED") || !strings.Contains(text, "6 established connections") {
			t.Errorf("explain svc does not show the pinned spread")
		}
	})

	t.Run("short-lived connections spread over all six Pods after the scale and raise no Event", func(t *testing.T) {
		const vip = "10.96.0.63"
		addr := vip + ":80"
		e.createService(t, "shortlived", vip, nil, tcp...)
		e.createSlice(t, e.slice("shortlived-1", "shortlived", ready(3), target...))
		e.waitAnswers(t, "the VIP answers", addr, 1)
		stop := e.churn(t, e.lab.ClientNS, addr, 24, 1500*time.Millisecond)
		defer stop()
		e.eventually(t, 15*time.Second, "the collector sees the churn", func() error {
			return e.serviceGaugeAtLeast(t, "proxyd_service_established_connections", "shortlived", 6)
		})
		e.updateSlice(t, e.slice("shortlived-1", "shortlived", ready(6), target...))
		e.eventually(t, 20*time.Second, "every endpoint holds a connection at one walk", func() error {
			return e.serviceGauge(t, "proxyd_service_endpoints_without_connections", "shortlived", 0)
		})
		time.Sleep(15 * time.Second) // past --balance-pinned-after, with walks every second
		if err := e.pinnedEvents(t, "shortlived", 0); err != nil {
			t.Error(err)
		}
		t.Logf("proxyd explain svc default/shortlived:\n%s", e.runExplain(t, "svc", "default/shortlived"))
	})
}

// serviceGauge checks one per-Service gauge of the collector.
func (e *env) serviceGauge(t *testing.T, name, svc string, want float64) error {
	t.Helper()
	got, ok := gauge(e.metrics(t), name, svc)
	if !ok || got != want {
		return errorf("%s{service=%q} = %v (present %v), want %v", name, svc, got, ok, want)
	}
	return nil
}

func (e *env) serviceGaugeAtLeast(t *testing.T, name, svc string, want float64) error {
	t.Helper()
	got, ok := gauge(e.metrics(t), name, svc)
	if !ok || got < want {
		return errorf("%s{service=%q} = %v (present %v), want at least %v", name, svc, got, ok, want)
	}
	return nil
}

func gauge(body, name, svc string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + name + `\{namespace="default",service="` + regexp.QuoteMeta(svc) + `"\} (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// pinnedEvents checks that the Service has exactly want ConnectionsPinned
// Events (want 1: at least one, of type Warning, reported by proxyd through
// events.k8s.io, so with reportingController set and no deprecated source).
func (e *env) pinnedEvents(t *testing.T, svc string, want int) error {
	t.Helper()
	list, err := e.cs.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Service,involvedObject.name=" + svc + ",reason=ConnectionsPinned"})
	if err != nil {
		return err
	}
	n := len(list.Items)
	switch {
	case want == 0 && n > 0:
		return errorf("%d ConnectionsPinned Events on %s: %s", n, svc, list.Items[0].Message)
	case want > 0 && n == 0:
		return errorf("no ConnectionsPinned Event on %s", svc)
	}
	for _, ev := range list.Items {
		if ev.Type != v1.EventTypeWarning || ev.ReportingController != "proxyd" || ev.InvolvedObject.UID == "" {
			return errorf("event %+v", ev)
		}
		t.Logf("Event %s: %s", ev.Reason, ev.Message)
	}
	return nil
}

// churn keeps n connections to addr open at any time, each for about
// life, until the returned stop is called.
func (e *env) churn(t *testing.T, ns, addr string, n int, life time.Duration) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for i := range n {
		wg.Go(func() {
			// Start spread over one lifetime, so connections end at
			// different times.
			select {
			case <-time.After(life * time.Duration(i) / time.Duration(n)):
			case <-ctx.Done():
				return
			}
			for ctx.Err() == nil {
				dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
				c, err := lab.DialContext(ns)(dctx, "tcp", addr)
				dcancel()
				if err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
					continue
				}
				_, _ = c.Write([]byte("hello\n"))
				buf := make([]byte, 64)
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, _ = c.Read(buf)
				select {
				case <-time.After(life):
				case <-ctx.Done():
				}
				_ = c.Close()
			}
		})
	}
	return func() {
		cancel()
		wg.Wait()
		if failed > 0 {
			t.Errorf("%d short-lived connections failed", failed)
		}
	}
}
