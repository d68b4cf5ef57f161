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
	out, err := theLab.Kubectl(ctx, "-n", "kube-system", "exec", "ds/proxyd", "--", "/proxyd", "explain", "svc", ns+"/"+app, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var r explain.ServiceReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	pods, err := n.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			want = append(want, p.Status.PodIP)
		}
	}
	for _, e := range r.Spread.Endpoints {
		if e.Candidate {
			got = append(got, e.IP.String())
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if r.ReadBy != "daemon" || r.Service.Name != app || !slices.Equal(got, want) {
		t.Errorf("explain svc in the pod: read by %q, service %v, endpoints %v; want the daemon's view of %v", r.ReadBy, r.Service, got, want)
	}
	text, err := theLab.Kubectl(ctx, "-n", "kube-system", "exec", "ds/proxyd", "--", "/proxyd", "explain", "svc", ns+"/"+app)
	if err != nil {
		t.Fatal(err)
	}
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
	args := []string{"-n", "kube-system", "exec", "ds/proxyd", "--", "/proxyd", "explain", "--from", client.Status.PodIP, "--to", f.vip}
	out, err := theLab.Kubectl(ctx, append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	var r explain.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	pods, err := n.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			want = append(want, p.Status.PodIP)
		}
	}
	for _, o := range r.Outcomes {
		got = append(got, o.Endpoint.Addr().String())
		if math.Abs(o.Probability-1/float64(len(r.Outcomes))) > 1e-9 {
			t.Errorf("%v: probability %v, want an equal share", o.Endpoint, o.Probability)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if r.ReadBy != "daemon" || r.Dataplane != "nftables" || r.Service == nil || r.Service.Name != app || !slices.Equal(got, want) {
		t.Errorf("explain in the pod: read by %q from %s, service %v, endpoints %v; want the daemon's nftables view of %s and %v", r.ReadBy, r.Dataplane, r.Service, got, app, want)
	}
	if !r.Drift.Known || len(r.Drift.Differences) != 0 {
		t.Errorf("drift %+v", r.Drift)
	}
	text, err := theLab.Kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl exec ds/proxyd -- /proxyd explain --from %s --to %s:\n%s", client.Status.PodIP, f.vip, text)
}
