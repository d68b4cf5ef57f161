//go:build e2ecluster

package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kube-proxy, privileged, sets the conntrack timeouts of its node at start;
// the upstream suite checks CLOSE_WAIT's ("should set TCP CLOSE_WAIT
// timeout"). proxyd's container is not privileged (/proc/sys is read-only
// there): its manifest's init container does it.
func TestTheDaemonSetSetsConntrackTimeoutsOnEveryNodeAsKubeProxyDoes(t *testing.T) {
	c := need(t)
	for i := range c.Nodes {
		ns := c.nodeNS(i + 1)
		for key, want := range map[string]string{
			"nf_conntrack_tcp_timeout_close_wait":  "3600",
			"nf_conntrack_tcp_timeout_established": "86400",
		} {
			out, err := c.Lab.Exec(context.Background(), ns, "cat", "/proc/sys/net/netfilter/"+key)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(out); got != want {
				t.Errorf("%s: %s = %s, want %s", c.Nodes[i].Name, key, got, want)
			}
		}
	}
}

// The suite finds the Service proxy's Pods by kube-proxy's label (it
// deletes them in "should work after restarting kube-proxy").
func TestProxydPodsCarryKubeProxysLabel(t *testing.T) {
	c := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := c.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]bool{}
	for _, p := range pods.Items {
		if strings.HasPrefix(p.Name, "proxyd-") {
			nodes[p.Spec.NodeName] = true
		}
	}
	if len(nodes) != len(c.Nodes) {
		t.Fatalf("proxyd Pods labelled k8s-app=kube-proxy on %v, want one on each of %v", nodes, c.NodeNames())
	}
}
