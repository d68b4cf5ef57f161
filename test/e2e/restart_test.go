//go:build e2e

package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// SIGTERM leaves the rules in place: connections keep working while no
// proxyd runs and across the next start, without a refused or lost one.
func TestRulesSurviveARestart(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	e.createService(t, "restart", "10.96.0.70", nil, svcPort{"tcp", v1.ProtocolTCP, 80})
	e.createSlice(t, e.slice("restart-1", "restart", []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	for _, dp := range dataplanes[:2] {
		t.Run(dp.name, func(t *testing.T) {
			px := e.startProxyd(t, dp.mode, dp.args...)
			e.waitAnswers(t, "the VIP answers", "10.96.0.70:80", 1)
			var failed, answered atomic.Int64
			var mu sync.Mutex
			samples := map[string]string{}
			begin := time.Now()
			var failedAt []time.Duration // batches with a failure, since begin
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case <-stop:
						return
					default:
					}
					r, err := e.lab.Traffic(context.Background(), e.lab.ClientNS, "tcp", "10.96.0.70:80", 20, 1)
					if err != nil {
						failed.Add(20)
						continue
					}
					failed.Add(int64(r.Failed()))
					answered.Add(int64(r.Answered()))
					mu.Lock()
					if r.Failed() > 0 {
						failedAt = append(failedAt, time.Since(begin).Round(time.Millisecond))
					}
					for k, v := range r.ErrorSamples {
						samples[k] = v
					}
					mu.Unlock()
				}
			}()
			time.Sleep(300 * time.Millisecond)
			stopping := time.Since(begin)
			px.stop(t)
			stopped := time.Since(begin)
			time.Sleep(time.Second) // no proxyd at all
			starting := time.Since(begin)
			px2 := e.startProxyd(t, dp.mode, dp.args...)
			healthy := time.Since(begin)
			time.Sleep(time.Second)
			close(stop)
			<-done
			px2.stop(t)
			// nftables must not lose one: its full rewrite keeps the
			// table in place (a re-created one let a SYN racing the
			// commit miss both rule sets). iptables-nft lost about one
			// in 5000 here before the conntrack clean-up forgot SYNs
			// refused while rules were missing (none in ~40,000 over 20
			// restarts since, cause not proved); up to 1 in 1000 is
			// logged as a warning, more fails.
			allowed := int64(0)
			if dp.mode == "iptables" {
				allowed = answered.Load() / 1000
			}
			if failed.Load() > allowed || answered.Load() < 100 {
				t.Errorf("across the restart: %d answered, %d failed: %v", answered.Load(), failed.Load(), samples)
				t.Errorf("failures at %v; SIGTERM at %v, exited at %v, restart at %v, healthy at %v",
					failedAt, stopping.Round(time.Millisecond), stopped.Round(time.Millisecond), starting.Round(time.Millisecond), healthy.Round(time.Millisecond))
			} else if failed.Load() > 0 {
				t.Logf("WARNING across the restart: %d of %d failed: %v", failed.Load(), failed.Load()+answered.Load(), samples)
			}
			t.Logf("across the restart: %d connections answered, %d failed", answered.Load(), failed.Load())
		})
	}
}
