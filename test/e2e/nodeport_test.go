//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// NodePorts and external IPs work from the client and from the node, in
// every dataplane.
func TestNodePortAndExternalIP(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	all := []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}
	tcp := svcPort{"tcp", v1.ProtocolTCP, 80}

	np := e.createNodePort(t, "np", "10.96.0.30", []string{"10.88.0.100"}, tcp)
	e.createSlice(t, e.slice("np-1", "np", all, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	empty := e.createNodePort(t, "np-empty", "10.96.0.31", nil, tcp)
	if _, err := e.lab.Exec(context.Background(), e.lab.ClientNS, "ip", "route", "replace", "10.88.0.100/32", "via", "10.244.1.1"); err != nil {
		t.Fatal(err)
	}
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			e.startDataplane(t, dp)
			e.nodePortSuite(t, np, empty, pods)
			e.localhostNodePort(t, dp, np, pods)
			e.secondaryAddressNodePort(t, dp, np, pods)
			e.forwardPolicyDrop(t, dp, np)
		})
	}
}

func (e *env) nodePortSuite(t *testing.T, np, empty *v1.Service, pods []lab.Pod) {
	nodePort := fmt.Sprintf("%s:%d", e.lab.NodeIP, np.Spec.Ports[0].NodePort)
	e.waitAnswers(t, "the NodePort answers", nodePort, 1)
	t.Run("a NodePort reached from the client balances over all Pods", func(t *testing.T) {
		r := e.traffic(t, e.lab.ClientNS, "tcp", nodePort, 300, 1)
		assertBalanced(t, "nodeport from client", r, 300, podNames(pods), 0.20, 0.47)
	})
	t.Run("a NodePort reached from the node itself balances over all Pods", func(t *testing.T) {
		r := e.traffic(t, e.lab.NodeNS, "tcp", nodePort, 300, 1)
		assertBalanced(t, "nodeport from node", r, 300, podNames(pods), 0.20, 0.47)
	})
	t.Run("an external IP routed to the node balances over all Pods", func(t *testing.T) {
		r := e.traffic(t, e.lab.ClientNS, "tcp", "10.88.0.100:80", 300, 1)
		assertBalanced(t, "external IP from client", r, 300, podNames(pods), 0.20, 0.47)
	})
	t.Run("a NodePort without endpoints refuses", func(t *testing.T) {
		addr := fmt.Sprintf("%s:%d", e.lab.NodeIP, empty.Spec.Ports[0].NodePort)
		for _, ns := range []string{e.lab.ClientNS, e.lab.NodeNS} {
			r := e.traffic(t, ns, "tcp", addr, 5, 1)
			if r.Errors.Refused != 5 {
				t.Errorf("from %s: %v %+v %v", ns, r.Counts, r.Errors, r.ErrorSamples)
			}
		}
	})
}

// forwardPolicyDrop: with FORWARD's policy DROP (as Docker sets it),
// iptables mode still forwards what it masquerades, and the replies, as
// kube-proxy's KUBE-FORWARD does; other traffic is left to the policy.
func (e *env) forwardPolicyDrop(t *testing.T, dp dataplane, np *v1.Service) {
	if dp.mode != "iptables" {
		return
	}
	bin := "iptables-nft"
	if slices.Contains(dp.args, "--iptables-backend=legacy") {
		bin = "iptables-legacy"
	}
	t.Run("with FORWARD's policy DROP, the NodePort is still forwarded", func(t *testing.T) {
		if _, err := e.lab.Exec(context.Background(), e.lab.NodeNS, bin, "-P", "FORWARD", "DROP"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, bin, "-P", "FORWARD", "ACCEPT") })
		nodePort := fmt.Sprintf("%s:%d", e.lab.NodeIP, np.Spec.Ports[0].NodePort)
		if r := e.traffic(t, e.lab.ClientNS, "tcp", nodePort, 50, 3); r.Answered() != 50 {
			t.Errorf("NodePort from the client: %v %+v %v, want 50 answered", r.Counts, r.Errors, r.ErrorSamples)
		}
		// The policy is in force: the client is inside the cluster CIDR,
		// so its ClusterIP traffic is not masqueraded, and dropped.
		r, err := e.lab.TrafficWith(context.Background(), e.lab.ClientNS, lab.TrafficOptions{
			Proto: "tcp", Addr: "10.96.0.30:80", Count: 3, Timeout: 300 * time.Millisecond})
		if err != nil || r.Errors.Timeout != 3 {
			t.Errorf("ClusterIP from the client under FORWARD DROP: %v %+v %v, want 3 timeouts", r.Counts, r.Errors, err)
		}
	})
}

// localhostNodePort checks kube-proxy's rule for 127.0.0.1:NodePort: iptables
// mode serves it (--iptables-localhost-nodeports defaults to true), the
// other modes never do.
func (e *env) localhostNodePort(t *testing.T, dp dataplane, np *v1.Service, pods []lab.Pod) {
	addr := fmt.Sprintf("127.0.0.1:%d", np.Spec.Ports[0].NodePort)
	if dp.mode == "iptables" {
		t.Run("iptables mode serves the NodePort on 127.0.0.1 of the node", func(t *testing.T) {
			r := e.traffic(t, e.lab.NodeNS, "tcp", addr, 300, 1)
			assertBalanced(t, "localhost nodeport", r, 300, podNames(pods), 0.20, 0.47)
		})
		return
	}
	t.Run("the NodePort is not served on 127.0.0.1, as in kube-proxy's "+dp.mode+" mode", func(t *testing.T) {
		if r := e.traffic(t, e.lab.NodeNS, "tcp", addr, 5, 1); r.Answered() != 0 || r.Errors.Refused != 5 {
			t.Errorf("%s from the node: %v %+v, want 5 refused", addr, r.Counts, r.Errors)
		}
	})
}

// secondaryAddressNodePort checks kube-proxy's default --nodeport-addresses:
// nftables mode answers only on the node's primary address, the iptables
// modes on every local one (here the node's bridge address, 10.244.1.1).
func (e *env) secondaryAddressNodePort(t *testing.T, dp dataplane, np *v1.Service, pods []lab.Pod) {
	addr := fmt.Sprintf("10.244.1.1:%d", np.Spec.Ports[0].NodePort)
	if dp.mode == "nftables" {
		t.Run("nftables mode does not serve the NodePort on a secondary node address", func(t *testing.T) {
			if r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 5, 1); r.Answered() != 0 || r.Errors.Refused != 5 {
				t.Errorf("%s from the client: %v %+v, want 5 refused", addr, r.Counts, r.Errors)
			}
		})
		return
	}
	t.Run("iptables mode serves the NodePort on every node address", func(t *testing.T) {
		r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 300, 1)
		assertBalanced(t, "nodeport on the bridge address", r, 300, podNames(pods), 0.20, 0.47)
	})
}

func (e *env) createNodePort(t *testing.T, name, clusterIP string, externalIPs []string, ports ...svcPort) *v1.Service {
	t.Helper()
	return e.createServiceWith(t, name, clusterIP, nil, func(s *v1.Service) {
		s.Spec.Type, s.Spec.ExternalIPs = v1.ServiceTypeNodePort, externalIPs
	}, ports...)
}

// sessionAffinity ClientIP: every connection of one client reaches the same
// Pod, in every dataplane that programs it.
func TestSessionAffinityClientIP(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "sticky", Namespace: "default"},
		Spec: v1.ServiceSpec{ClusterIP: "10.96.0.40", SessionAffinity: v1.ServiceAffinityClientIP,
			Ports: []v1.ServicePort{{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80}}}}
	if _, err := e.cs.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.cs.CoreV1().Services("default").Delete(context.Background(), "sticky", metav1.DeleteOptions{})
	})
	e.createSlice(t, e.slice("sticky-1", "sticky", []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			e.startDataplane(t, dp)
			t.Cleanup(func() { _, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, "conntrack", "-F") })
			e.waitAnswers(t, "the VIP answers", "10.96.0.40:80", 1)
			// One at a time: SYNs in flight together before the first one
			// has recorded the client race past the affinity lookup, in
			// kube-proxy's rulesets as in ours.
			for _, ns := range []string{e.lab.ClientNS, e.lab.NodeNS} {
				r, err := e.lab.TrafficWith(context.Background(), ns, lab.TrafficOptions{
					Proto: "tcp", Addr: "10.96.0.40:80", Count: 60, Parallel: 1})
				if err != nil {
					t.Fatal(err)
				}
				if len(r.Counts) != 1 || r.Failed() > 0 {
					t.Errorf("from %s: 60 connections reached %v (%+v %v), want one Pod", ns, r.Counts, r.Errors, r.ErrorSamples)
				}
			}
		})
	}
}
