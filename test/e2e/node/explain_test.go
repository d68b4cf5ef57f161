//go:build e2enode

package node

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/pkg/explain"
)

// proxyd explain inside the DaemonSet pod, as a user would run it with
// kubectl exec: the CLI in the container asks its daemon on the metrics
// address (the pod shares the node's network namespace).
func TestExplainSvcInsideTheDaemonSetPod(t *testing.T) {
	n, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var r explain.ServiceReport
	execExplainJSON(ctx, t, &r, "svc", ns+"/"+app)
	want := livePodIPs(ctx, t, n)
	var got []string
	for _, e := range r.Spread.Endpoints {
		if e.Candidate {
			got = append(got, e.IP.String())
		}
	}
	slices.Sort(got)
	if r.ReadBy != "daemon" || r.Service.Name != app || !slices.Equal(got, want) {
		t.Errorf("explain svc in the pod: read by %q, service %v, endpoints %v; want the daemon's view of %v", r.ReadBy, r.Service, got, want)
	}
	text := execExplain(ctx, t, "svc", ns+"/"+app)
	t.Logf("kubectl exec ds/proxyd -- /proxyd explain svc %s/%s:\n%s", ns, app, text)
}

// proxyd explain of a connection inside the DaemonSet pod: from the
// client Pod to the Service, the daemon reads its nftables table back and
// predicts the echo Pods the Deployment runs, a third each, without drift.
func TestExplainConnectionInsideTheDaemonSetPod(t *testing.T) {
	n, f := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := n.Client.CoreV1().Pods(ns).Get(ctx, "client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var r explain.Report
	execExplainJSON(ctx, t, &r, "--from", client.Status.PodIP, "--to", f.vip)
	want := livePodIPs(ctx, t, n)
	var got []string
	for _, o := range r.Outcomes {
		got = append(got, o.Endpoint.Addr().String())
		if math.Abs(o.Probability-1/float64(len(r.Outcomes))) > 1e-9 {
			t.Errorf("%v: probability %v, want an equal share", o.Endpoint, o.Probability)
		}
	}
	slices.Sort(got)
	if r.ReadBy != "daemon" || r.Dataplane != "nftables" || r.Service == nil || r.Service.Name != app || !slices.Equal(got, want) {
		t.Errorf("explain in the pod: read by %q from %s, service %v, endpoints %v; want the daemon's nftables view of %s and %v", r.ReadBy, r.Dataplane, r.Service, got, app, want)
	}
	if !r.Drift.Known || len(r.Drift.Differences) != 0 {
		t.Errorf("drift %+v", r.Drift)
	}
	text := execExplain(ctx, t, "--from", client.Status.PodIP, "--to", f.vip)
	t.Logf("kubectl exec ds/proxyd -- /proxyd explain --from %s --to %s:\n%s", client.Status.PodIP, f.vip, text)
}

// execExplain runs `proxyd explain ARGS` in the DaemonSet pod, as a user
// would with kubectl exec, and returns what it printed.
func execExplain(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := theLab.Kubectl(ctx, append([]string{"-n", "kube-system", "exec", "ds/proxyd", "--", "/proxyd", "explain"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// execExplainJSON runs `proxyd explain ARGS -o json` in the DaemonSet pod
// and decodes its answer into v.
func execExplainJSON(ctx context.Context, t *testing.T, v any, args ...string) {
	t.Helper()
	out := execExplain(ctx, t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
}

// livePodIPs are the sorted addresses of the fixture's echo Pods that are
// not being deleted.
func livePodIPs(ctx context.Context, t *testing.T, n *Node) []string {
	t.Helper()
	pods, err := n.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			ips = append(ips, p.Status.PodIP)
		}
	}
	slices.Sort(ips)
	return ips
}
