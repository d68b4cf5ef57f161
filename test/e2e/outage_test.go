//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// After the apiserver was down for 10 s, a change made once it answers
// again reaches the kernel within 2 s, and nothing served before breaks
// while it is down.
func TestChangesFlowSoonAfterAnAPIServerOutage(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:2]
	tcp := svcPort{"tcp", v1.ProtocolTCP, 80}
	target := svcPort{"tcp", v1.ProtocolTCP, 8080}
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			e.startDataplane(t, dp)
			e.createService(t, "outage-before", "10.96.0.90", nil, tcp)
			e.createSlice(t, e.slice("outage-before-1", "outage-before", []endpoint{{pods[0], true}}, target))
			e.waitAnswers(t, "the Service made before the outage answers", "10.96.0.90:80", 1)

			if err := e.lab.StopAPIServer(); err != nil {
				t.Fatal(err)
			}
			stopped := time.Now()
			t.Cleanup(func() {
				if !e.lab.APIServerRunning() {
					if _, err := e.lab.StartAPIServer(context.Background()); err != nil {
						t.Errorf("restart kube-apiserver after a failure: %v", err)
					}
				}
			})
			time.Sleep(5 * time.Second)
			if r := e.traffic(t, e.lab.ClientNS, "tcp", "10.96.0.90:80", 20, 1); r.Counts[pods[0].Name] != 20 {
				t.Errorf("while the apiserver is down: %v %+v, want all 20 answered", r.Counts, r.Errors)
			}
			time.Sleep(time.Until(stopped.Add(10 * time.Second)))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			startup, err := e.lab.StartAPIServer(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ready := time.Now()
			e.createService(t, "outage-after", "10.96.0.91", nil, tcp)
			e.createSlice(t, e.slice("outage-after-1", "outage-after", []endpoint{{pods[1], true}}, target))
			created := time.Since(ready)
			e.servedBy(t, "10.96.0.91:80", pods[1].Name, 60*time.Second)
			took := time.Since(ready)
			t.Logf("apiserver unavailable for %v (ready %v after its restart); the change made %v after ready reached the kernel %v after ready",
				ready.Sub(stopped).Round(100*time.Millisecond), startup.Round(100*time.Millisecond),
				created.Round(time.Millisecond), took.Round(time.Millisecond))
			if took > 2*time.Second {
				t.Errorf("the change reached the kernel %v after the apiserver was ready, want within 2s", took.Round(time.Millisecond))
			}
		})
	}
}
