//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// internalTrafficPolicy Local, in every dataplane, as kube-proxy does it:
// only this node's endpoint serves; with none here but some elsewhere the
// ClusterIP drops (clients retry), and with none anywhere it refuses.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	for i, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			name, vip := fmt.Sprintf("itp-%d", i), fmt.Sprintf("10.96.0.%d", 45+i)
			e.createServiceWith(t, name, vip, nil, func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
			}, svcPort{"tcp", v1.ProtocolTCP, 80})
			es := e.slice(name+"-1", name, []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080})
			es.Endpoints[0].NodeName = ptr(e.lab.NodeName)
			slice := e.createSlice(t, es)
			e.startDataplane(t, dp)
			addr := vip + ":80"
			e.waitAnswers(t, "the VIP answers", addr, 1)
			t.Run("only the node's own endpoint serves", func(t *testing.T) {
				r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 100, 1)
				if r.Counts[pods[0].Name] != 100 {
					t.Errorf("100 connections: %v %+v, want all on %s", r.Counts, r.Errors, pods[0].Name)
				}
			})
			update := func(t *testing.T) {
				t.Helper()
				out, err := e.cs.DiscoveryV1().EndpointSlices("default").Update(context.Background(), slice, metav1.UpdateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				slice = out
			}
			outcome := func(want string) func() error {
				return func() error {
					r, err := e.lab.TrafficWith(context.Background(), e.lab.ClientNS, lab.TrafficOptions{Proto: "tcp", Addr: addr, Count: 3, Timeout: 500 * time.Millisecond})
					switch {
					case err != nil:
						return err
					case want == "timeout" && r.Errors.Timeout != 3, want == "refused" && r.Errors.Refused != 3:
						return errorf("3 connections: %v %+v, want 3 %s", r.Counts, r.Errors, want)
					}
					return nil
				}
			}
			t.Run("with the local endpoint moved away, the ClusterIP drops", func(t *testing.T) {
				slice.Endpoints[0].NodeName = ptr("node2")
				update(t)
				took := e.eventually(t, 5*time.Second, "connections time out", outcome("timeout"))
				t.Logf("dropped %v after the update", took)
			})
			t.Run("with no endpoint anywhere, the ClusterIP refuses", func(t *testing.T) {
				for j := range slice.Endpoints {
					slice.Endpoints[j].Conditions.Ready, slice.Endpoints[j].Conditions.Serving = ptr(false), ptr(false)
				}
				update(t)
				took := e.eventually(t, 5*time.Second, "connections are refused", outcome("refused"))
				t.Logf("refused %v after the update", took)
			})
		})
	}
}
