//go:build e2ecluster

package cluster

import (
	"context"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// In iptables mode NodePorts answer on 127.0.0.1 too (kube-proxy's
// --iptables-localhost-nodeports, on by default), which needs
// route_localnet. The manifest's privileged init container sets it; the
// unprivileged proxyd container must then use it rather than give up
// because it cannot write the sysctl itself.
func TestIptablesModeAnswersNodePortsOnLocalhost(t *testing.T) {
	c := setup(t)
	switchMode(t, c, "iptables")
	t.Cleanup(func() { switchMode(t, c, "nftables") })
	svc := service(t, c, "localhost-np", "remote", 1, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort })
	url := "http://127.0.0.1:" + strconv.Itoa(int(svc.Spec.Ports[0].NodePort)) + "/hostname"
	if got := get(t, c, c.nodeNS(1), url); got != "remote" {
		t.Fatalf("GET %s on node1 answered by %q, want remote (on node2)", url, got)
	}
}

// switchMode rolls proxyd's DaemonSet to mode and waits for the rollout.
func switchMode(t *testing.T, c *Cluster, mode string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := c.Nodes[0].ApplyProxyd(ctx, repoRoot+"/deploy/daemonset.yaml", mode); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Lab.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "daemonset/proxyd", "--timeout=3m"); err != nil {
		t.Fatalf("rollout to %s: %v\n%s", mode, err, out)
	}
}
