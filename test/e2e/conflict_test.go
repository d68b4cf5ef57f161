//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// Two Services claim one external IP and port (the API accepts it,
// kubernetes/kubernetes#69599): the older one serves it, the newer keeps
// its ClusterIP, proxyd reports the conflict, and every later change still
// reaches the kernel.
func TestTwoServicesClaimingOneExternalIPAndPort(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	const contested = "10.88.0.110"
	if _, err := e.lab.Exec(context.Background(), e.lab.ClientNS, "ip", "route", "replace", contested+"/32", "via", lab.BridgeIP); err != nil {
		t.Fatal(err)
	}
	tcp := svcPort{"tcp", v1.ProtocolTCP, 80}
	target := svcPort{"tcp", v1.ProtocolTCP, 8080}
	withExternalIP := func(s *v1.Service) { s.Spec.ExternalIPs = []string{contested} }
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			e.startDataplane(t, dp)
			e.createServiceWith(t, "claim-old", "10.96.0.80", nil, withExternalIP, tcp)
			e.createSlice(t, e.slice("claim-old-1", "claim-old", []endpoint{{pods[0], true}}, target))
			e.waitAnswers(t, "the older Service answers", "10.96.0.80:80", 1)
			time.Sleep(1100 * time.Millisecond) // a later creationTimestamp
			e.createServiceWith(t, "claim-new", "10.96.0.81", nil, withExternalIP, tcp)
			e.createSlice(t, e.slice("claim-new-1", "claim-new", []endpoint{{pods[1], true}}, target))

			time.Sleep(2 * time.Second)
			e.createService(t, "claim-after", "10.96.0.82", nil, tcp)
			e.createSlice(t, e.slice("claim-after-1", "claim-after", []endpoint{{pods[2], true}}, target))
			took := e.servedBy(t, "10.96.0.82:80", pods[2].Name, 15*time.Second)
			t.Logf("a Service created after the conflict was served %v after its slice", took.Round(time.Millisecond))
			if took > 2*time.Second {
				t.Errorf("a Service created after the conflict was served only %v after its slice, want within 2s", took.Round(time.Millisecond))
			}

			t.Run("the contested address is served by the older Service", func(t *testing.T) {
				r := e.traffic(t, e.lab.ClientNS, "tcp", contested+":80", 30, 1)
				if r.Counts[pods[0].Name] != 30 {
					t.Errorf("%s:80 reached %v (%+v), want all 30 on %s", contested, r.Counts, r.Errors, pods[0].Name)
				}
			})
			t.Run("the newer Service keeps its ClusterIP", func(t *testing.T) {
				r := e.traffic(t, e.lab.ClientNS, "tcp", "10.96.0.81:80", 10, 1)
				if r.Counts[pods[1].Name] != 10 {
					t.Errorf("10.96.0.81:80 reached %v (%+v), want all 10 on %s", r.Counts, r.Errors, pods[1].Name)
				}
			})
			t.Run("the conflict is a Warning Event on the newer Service and a gauge", func(t *testing.T) {
				e.eventually(t, 10*time.Second, "a Warning Event on default/claim-new", func() error {
					return e.warningEvent("claim-new", "ServiceConflict", contested)
				})
				if body := e.metrics(t); !strings.Contains(body, "proxyd_service_conflicts 1") {
					t.Errorf("/metrics lacks proxyd_service_conflicts 1")
				}
			})
		})
	}
}

// servedBy polls addr with one TCP connection every 50 ms until pod
// answers, and returns how long that took; it fails the test after limit.
func (e *env) servedBy(t *testing.T, addr, pod string, limit time.Duration) time.Duration {
	t.Helper()
	return e.eventually(t, limit, addr+" served by "+pod, func() error {
		r, err := e.lab.TrafficWith(context.Background(), e.lab.ClientNS, lab.TrafficOptions{
			Proto: "tcp", Addr: addr, Count: 1, Timeout: 300 * time.Millisecond})
		if err != nil {
			return err
		}
		if r.Counts[pod] != 1 {
			return fmt.Errorf("%v %+v", r.Counts, r.Errors)
		}
		return nil
	})
}

// warningEvent looks for a Warning Event proxyd posted about the Service
// name in default, with reason and a note containing want.
func (e *env) warningEvent(name, reason, want string) error {
	list, err := e.cs.EventsV1().Events("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return err
	}
	var seen []string
	for _, ev := range list.Items {
		if ev.Regarding.Kind != "Service" || ev.Regarding.Name != name {
			continue
		}
		seen = append(seen, ev.Type+" "+ev.Reason+": "+ev.Note)
		if ev.Type == v1.EventTypeWarning && ev.Reason == reason && strings.Contains(ev.Note, want) && ev.ReportingController == "proxyd" {
			return nil
		}
	}
	return fmt.Errorf("no Warning %s event mentioning %q on default/%s; events: %v", reason, want, name, seen)
}
