//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// A LoadBalancer Service with externalTrafficPolicy Local and
// loadBalancerSourceRanges, in every dataplane: its health check node port
// reports the node's ready endpoints as kube-proxy does, and its
// load-balancer IP admits only the ranges while its NodePort stays open.
func TestLoadBalancer(t *testing.T) {
	e := needEnv(t)
	const lbIP = "10.88.0.101"
	if _, err := e.lab.Exec(context.Background(), e.lab.ClientNS, "ip", "route", "replace", lbIP+"/32", "via", "10.244.1.1"); err != nil {
		t.Fatal(err)
	}
	for i, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			name := fmt.Sprintf("lb-%d", i)
			svc := e.createLoadBalancer(t, name, fmt.Sprintf("10.96.0.%d", 35+i), lbIP, []string{lab.ClientIP + "/32"})
			pods := e.lab.Pods[:3]
			es := e.slice(name+"-1", name, []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080})
			es.Endpoints[0].NodeName = ptr(e.lab.NodeName)
			slice := e.createSlice(t, es)
			e.startDataplane(t, dp)
			e.loadBalancerSuite(t, svc, slice, lbIP+":80", pods)
		})
	}
}

func (e *env) loadBalancerSuite(t *testing.T, svc *v1.Service, slice *discovery.EndpointSlice, lbAddr string, pods []lab.Pod) {
	e.waitAnswers(t, "the load-balancer IP answers the admitted client", lbAddr, 1)
	t.Run("an admitted Pod reaches every endpoint through the load-balancer IP", func(t *testing.T) {
		// The client is inside the cluster CIDR, so externalTrafficPolicy
		// Local does not narrow its choice.
		r := e.traffic(t, e.lab.ClientNS, "tcp", lbAddr, 300, 1)
		assertBalanced(t, "load-balancer IP from client", r, 300, podNames(pods), 0.20, 0.47)
	})

	hc := fmt.Sprintf("http://%s:%d/", e.lab.NodeIP, svc.Spec.HealthCheckNodePort)
	health := func(wantCode, wantLocal int) func() error {
		return func() error {
			code, body, err := e.lab.HTTPGet(context.Background(), e.lab.ClientNS, hc)
			if err != nil {
				return err
			}
			if want := fmt.Sprintf(`"localEndpoints": %d,`, wantLocal); code != wantCode || !strings.Contains(body, want) {
				return errorf("GET %s: %d %s, want %d with %s", hc, code, body, wantCode, want)
			}
			return nil
		}
	}
	t.Run("the health check node port answers 200 with the node's one ready endpoint", func(t *testing.T) {
		e.eventually(t, 5*time.Second, "health check 200", health(200, 1))
	})
	t.Run("the health check answers 503 once the local endpoint is not ready", func(t *testing.T) {
		slice.Endpoints[0].Conditions.Ready, slice.Endpoints[0].Conditions.Serving = ptr(false), ptr(false)
		if _, err := e.cs.DiscoveryV1().EndpointSlices("default").Update(context.Background(), slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		took := e.eventually(t, 5*time.Second, "health check 503", health(503, 0))
		t.Logf("503 after %v", took)
	})

	t.Run("a source outside loadBalancerSourceRanges is dropped while the NodePort still answers", func(t *testing.T) {
		cur, err := e.cs.CoreV1().Services("default").Get(context.Background(), svc.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24"}
		if _, err := e.cs.CoreV1().Services("default").Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		took := e.eventually(t, 5*time.Second, "the load-balancer IP drops the client", func() error {
			r, err := e.lab.TrafficWith(context.Background(), e.lab.ClientNS, lab.TrafficOptions{Proto: "tcp", Addr: lbAddr, Count: 3, Timeout: 500 * time.Millisecond})
			if err == nil && r.Errors.Timeout != 3 {
				err = errorf("3 connections: %v %+v, want 3 timeouts", r.Counts, r.Errors)
			}
			return err
		})
		t.Logf("dropped %v after the update", took)
		nodePort := fmt.Sprintf("%s:%d", e.lab.NodeIP, svc.Spec.Ports[0].NodePort)
		if r := e.traffic(t, e.lab.ClientNS, "tcp", nodePort, 20, 1); r.Answered() != 20 {
			t.Errorf("NodePort from the same client: %v %+v", r.Counts, r.Errors)
		}
	})
}

// createLoadBalancer creates a LoadBalancer Service with
// externalTrafficPolicy Local and gives it ingress IP lbIP, as a cloud's
// controller would.
func (e *env) createLoadBalancer(t *testing.T, name, clusterIP, lbIP string, sourceRanges []string) *v1.Service {
	t.Helper()
	svc := e.createServiceWith(t, name, clusterIP, nil, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.LoadBalancerSourceRanges = sourceRanges
	}, svcPort{"tcp", v1.ProtocolTCP, 80})
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP}}
	out, err := e.cs.CoreV1().Services("default").UpdateStatus(context.Background(), svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("set the load-balancer status of %s: %v", name, err)
	}
	if out.Spec.HealthCheckNodePort == 0 {
		t.Fatalf("the apiserver allocated no healthCheckNodePort to %s", name)
	}
	return out
}
