//go:build e2enode

package node

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	ns      = "default"
	app     = "echo"
	reflect = 2 * time.Second // how fast an EndpointSlice change must show in traffic
)

// fixture is the shared workload: Deployment echo behind Service echo
// (ClusterIP), and a client Pod whose network namespace runs echo client.
type fixture struct {
	vip      string // ClusterIP:8080
	clientNS string // the client Pod's CRI netns
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

func setup(t *testing.T) (*Node, fixture) {
	t.Helper()
	n := need(t)
	fixOnce.Do(func() { fix, fixErr = makeFixture(n) })
	if fixErr != nil {
		t.Fatalf("fixture: %v", fixErr)
	}
	return n, fix
}

func makeFixture(n *Node) (fixture, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var f fixture
	cs := n.Client
	t0 := time.Now()
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, EchoDeployment(app, 3), metav1.CreateOptions{}); err != nil {
		return f, err
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, Service(app, app, ""), metav1.CreateOptions{})
	if err != nil {
		return f, err
	}
	f.vip = net.JoinHostPort(svc.Spec.ClusterIP, "8080")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, EchoPod("client"), metav1.CreateOptions{}); err != nil {
		return f, err
	}
	if _, err := n.WaitPodsReady(ctx, ns, "app="+app, 3, 60*time.Second); err != nil {
		return f, err
	}
	var err2 error
	if f.clientNS, err2 = clientNetns(ctx, n, "client", false); err2 != nil {
		return f, err2
	}
	if err := n.WaitReadyEndpoints(ctx, ns, app, 3, 30*time.Second); err != nil {
		return f, err
	}
	// proxyd may not have synced the last slice change yet: wait (≤ reflect)
	// until traffic reaches all three.
	sliceAt := time.Now()
	for {
		res, err := n.Traffic(ctx, f.clientNS, f.vip, 60)
		if err == nil && len(res.Counts) == 3 && res.Failed() == 0 {
			break
		}
		if time.Since(sliceAt) > reflect {
			return f, fmt.Errorf("traffic to %s not on all 3 Pods %v after the slices were: %+v %v", f.vip, reflect, res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("fixture: traffic on all 3 Pods %.2fs after their slices were ready\n", time.Since(sliceAt).Seconds())
	fmt.Printf("fixture: 3 echo Pods + client Ready, slices written in %.1fs; service %s, client netns %s\n",
		time.Since(t0).Seconds(), f.vip, f.clientNS)
	return f, nil
}

// clientNetns waits for the client Pod name (creating it if create) and
// returns its CRI network namespace.
func clientNetns(ctx context.Context, n *Node, name string, create bool) (string, error) {
	if create {
		if _, err := n.Client.CoreV1().Pods(ns).Create(ctx, EchoPod(name), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", err
		}
	}
	pods, err := n.WaitPodsReady(ctx, ns, "role="+name, 1, 60*time.Second)
	if err != nil {
		return "", err
	}
	return PodNetns(ctx, pods[0].Status.PodIP)
}

func podNames(t *testing.T, n *Node) []string {
	t.Helper()
	pods, err := n.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			names = append(names, p.Name)
		}
	}
	sort.Strings(names)
	return names
}

func keys(m map[string]int) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// balanced checks res reached exactly want, each with at least min, and no failure.
func balanced(t *testing.T, what string, res lab.ClientResult, want []string, min int) {
	t.Helper()
	t.Logf("%s: counts %v errors %+v", what, res.Counts, res.Errors)
	if res.Failed() != 0 {
		t.Errorf("%s: %d connections failed: %+v %v", what, res.Failed(), res.Errors, res.ErrorSamples)
	}
	if got := keys(res.Counts); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s: reached %v, want %v", what, got, want)
	}
	for name, c := range res.Counts {
		if c < min {
			t.Errorf("%s: %s got %d connections, want ≥ %d", what, name, c, min)
		}
	}
}

func TestClusterIPReachesAllPods(t *testing.T) {
	n, f := setup(t)
	ctx := context.Background()
	want := podNames(t, n)
	res, err := n.Traffic(ctx, f.clientNS, f.vip, 300)
	if err != nil {
		t.Fatal(err)
	}
	balanced(t, "client Pod → "+f.vip, res, want, 50)
	res, err = n.Traffic(ctx, theLab.NodeNS, f.vip, 300)
	if err != nil {
		t.Fatal(err)
	}
	balanced(t, "node → "+f.vip, res, want, 50)
}

func TestKubernetesServiceFromPod(t *testing.T) {
	n, f := setup(t)
	code, body, err := theLab.HTTPGet(context.Background(), f.clientNS, "https://10.96.0.1:443/version")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("client Pod → https://10.96.0.1:443/version: %d %s", code, strings.Join(strings.Fields(body), " "))
	if code != 200 || !strings.Contains(body, "gitVersion") {
		t.Errorf("got %d %q", code, body)
	}
	_ = n
}

func TestHeadlessServiceGetsNoRules(t *testing.T) {
	n, f := setup(t)
	ctx := context.Background()
	h, err := n.Client.CoreV1().Services(ns).Create(ctx, Service("echo-headless", app, corev1.ClusterIPNone), metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err == nil && h.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("headless service got ClusterIP %q", h.Spec.ClusterIP)
	}
	if err := n.WaitReadyEndpoints(ctx, ns, "echo-headless", len(podNames(t, n)), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // ≥ proxyd's min sync period twice
	rules, err := theLab.Exec(ctx, theLab.NodeNS, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	svcIP, _, _ := net.SplitHostPort(f.vip)
	if strings.Contains(rules, "echo-headless") {
		t.Errorf("nft ruleset mentions the headless Service:\n%s", grepLines(rules, "echo-headless"))
	}
	if !strings.Contains(rules, svcIP) {
		t.Errorf("nft ruleset lacks the ClusterIP %s of Service echo", svcIP)
	}
	t.Logf("ruleset: %d lines, %d mention %s, 0 mention echo-headless", strings.Count(rules, "\n"), strings.Count(rules, svcIP), svcIP)
	res, err := n.Traffic(ctx, f.clientNS, f.vip, 300)
	if err != nil {
		t.Fatal(err)
	}
	balanced(t, "ClusterIP beside headless", res, podNames(t, n), 50)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// scaleAndMeasure scales the Deployment, waits until the slices show want
// ready endpoints, then sends 60-connection batches (300 ms timeout) until one reaches
// exactly the surviving Pods; it returns the time from the slice change to
// the start of that batch.
func scaleAndMeasure(t *testing.T, n *Node, f fixture, want int) time.Duration {
	// f.clientNS is the scale test's own client (see TestScaleReflectedWithin2s).
	t.Helper()
	ctx := context.Background()
	sc, err := n.Client.AppsV1().Deployments(ns).GetScale(ctx, app, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sc.Spec.Replicas = int32(want)
	if _, err := n.Client.AppsV1().Deployments(ns).UpdateScale(ctx, app, sc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReadyEndpoints(ctx, ns, app, want, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	sliceAt := time.Now()
	ready, err := n.ReadyEndpointPods(ctx, ns, app)
	if err != nil {
		t.Fatal(err)
	}
	failedBefore := 0
	for i := 0; time.Since(sliceAt) < 10*time.Second; i++ {
		start := time.Now()
		res, err := n.Lab.TrafficWith(ctx, f.clientNS, lab.TrafficOptions{Proto: "tcp", Addr: f.vip, Count: 60, Parallel: 8, Timeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Failed() == 0 && strings.Join(keys(res.Counts), ",") == strings.Join(ready, ",") {
			d := start.Sub(sliceAt)
			if d < 0 {
				d = 0
			}
			t.Logf("scale to %d: traffic reached exactly %v in batch %d, %.2fs after the slices showed %d ready (%d connections failed in earlier batches)",
				want, ready, i, d.Seconds(), want, failedBefore)
			return d
		}
		failedBefore += res.Failed()
		t.Logf("scale to %d: batch %d at +%.2fs: %v errors %+v", want, i, time.Since(sliceAt).Seconds(), res.Counts, res.Errors)
	}
	t.Fatalf("scale to %d: traffic never matched %v", want, ready)
	return 0
}

func TestScaleReflectedWithin2s(t *testing.T) {
	n, f := setup(t)
	// Its own client Pod: connections that fail while Pods go away leave
	// UNREPLIED conntrack entries, and other tests must not meet them.
	cns, err := clientNetns(context.Background(), n, "client-scale", true)
	if err != nil {
		t.Fatal(err)
	}
	f.clientNS = cns
	if d := scaleAndMeasure(t, n, f, 5); d > reflect {
		t.Errorf("scale up to 5 reflected after %v, want ≤ %v", d, reflect)
	}
	if d := scaleAndMeasure(t, n, f, 2); d > reflect {
		t.Errorf("scale down to 2 reflected after %v, want ≤ %v", d, reflect)
	}
	// A SYN DNATed to a Pod that went away leaves an UNREPLIED entry for
	// 120 s (nf_conntrack_tcp_timeout_syn_sent), and a new connection
	// reusing its source port would follow it to the dead Pod; proxyd
	// deletes such entries once the endpoint has left the slice
	// (kube-proxy clears only UDP ones).
	start, first := time.Now(), staleSYNs(t, n, f.vip)
	for stale := first; stale != ""; stale = staleSYNs(t, n, f.vip) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("10 s after scaling down, unanswered SYNs to %s still point at Pods that are gone:\n%s", f.vip, stale)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after scaling down: %d unanswered SYNs to gone Pods, none left %v later", strings.Count(first, "\n")+min(1, len(first)), time.Since(start).Round(10*time.Millisecond))
	scaleAndMeasure(t, n, f, 3)
}

func TestNotReadyPodGetsNoNewConnections(t *testing.T) {
	n, f := setup(t)
	ctx := context.Background()
	pods, err := n.WaitPodsReady(ctx, ns, "app="+app, 3, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	victim := pods[0]
	vns, err := PodNetns(ctx, victim.Status.PodIP)
	if err != nil {
		t.Fatal(err)
	}
	// Drop the kubelet's probes (they come from the cni0 gateway) inside
	// the victim's own netns: its readiness probe fails while the server
	// keeps running and still answers anyone else.
	script := "add table inet pxdprobe\n" +
		"add chain inet pxdprobe in { type filter hook input priority 0; }\n" +
		"add rule inet pxdprobe in ip saddr " + CNIGateway + " tcp dport 8080 drop\n"
	if out, err := nftIn(vns, script); err != nil {
		t.Fatalf("nft in %s: %v %s", vns, err, out)
	}
	defer func() {
		_, _ = nftIn(vns, "delete table inet pxdprobe\n")
		if _, err := n.WaitPodsReady(ctx, ns, "app="+app, 3, 30*time.Second); err != nil {
			t.Errorf("victim did not become Ready again: %v", err)
		}
	}()
	t0 := time.Now()
	if err := n.WaitReadyEndpoints(ctx, ns, app, 2, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s NotReady in the slices %.1fs after its probes started failing", victim.Name, time.Since(t0).Seconds())
	sliceAt := time.Now()
	var others []string
	for _, p := range pods[1:] {
		others = append(others, p.Name)
	}
	sort.Strings(others)
	// The first batch may still straddle proxyd's sync; allow reflect.
	for time.Since(sliceAt) < reflect {
		res, err := n.Traffic(ctx, f.clientNS, f.vip, 50)
		if err == nil && res.Counts[victim.Name] == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res, err := n.Traffic(ctx, f.clientNS, f.vip, 300)
	if err != nil {
		t.Fatal(err)
	}
	balanced(t, "with "+victim.Name+" NotReady", res, others, 50)
	direct, err := n.Traffic(ctx, f.clientNS, net.JoinHostPort(victim.Status.PodIP, "8080"), 5)
	if err == nil && direct.Counts[victim.Name] != 5 {
		t.Errorf("the NotReady Pod should still answer directly: %+v", direct)
	}
}

func nftIn(netns, script string) (string, error) {
	cmd := exec.Command("ip", "netns", "exec", netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestSteadyLoadBaseline is the control for the rollout test: the same
// load for 5 s without a restart.
func TestSteadyLoadBaseline(t *testing.T) {
	_, f := setup(t)
	stop := make(chan struct{})
	time.AfterFunc(5*time.Second, func() { close(stop) })
	st := steadyLoad(f.clientNS, f.vip, 4, stop)
	t.Logf("steady load, no change: %v %v", st, st.samples)
	if st.failed != 0 || st.conns < 100 {
		t.Errorf("want ≥100 connections and no failure: %v\n%s", st, unreplied())
	}
}

func TestRolloutRestartLosesNoConnection(t *testing.T) {
	n, f := setup(t)
	ctx := context.Background()
	before, err := n.WaitPodsReady(ctx, "kube-system", "app.kubernetes.io/name=proxyd", 1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	begin := time.Now()
	res := make(chan loadStats, 1)
	go func() { res <- steadyLoad(f.clientNS, f.vip, 4, stop) }()
	time.Sleep(time.Second)
	t0 := time.Now()
	if _, err := theLab.Kubectl(ctx, "-n", "kube-system", "rollout", "restart", "daemonset/proxyd"); err != nil {
		close(stop)
		t.Fatal(err)
	}
	out, err := theLab.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "daemonset/proxyd", "--timeout=120s")
	if err != nil {
		close(stop)
		t.Fatalf("%v\n%s", err, proxydLogs(ctx))
	}
	rolled := time.Since(t0)
	after, err := n.WaitPodsReady(ctx, "kube-system", "app.kubernetes.io/name=proxyd", 1, 30*time.Second)
	if err != nil {
		close(stop)
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // keep the load on through the new pod's first syncs
	close(stop)
	st := <-res
	t.Logf("rollout restart at +%.2fs (load began %s UTC): %s → %s, rolled out in %.1fs (%s)",
		t0.Sub(begin).Seconds(), begin.UTC().Format("15:04:05.000"), before[0].Name, after[0].Name, rolled.Seconds(),
		strings.Join(strings.Fields(out), " "))
	t.Logf("load during the rollout: %v", st)
	for _, s := range st.samples {
		t.Logf("  %s", s)
	}
	if after[0].Name == before[0].Name {
		t.Errorf("the proxyd pod was not replaced")
	}
	if st.failed != 0 {
		t.Errorf("%d of %d connections failed during the rollout\n%s\n%s", st.failed, st.conns, unreplied(), proxydLogs(ctx))
	}
	if st.slow != 0 {
		t.Logf("note: %d connections needed a SYN retransmission during the rollout", st.slow)
	}
}

// staleSYNs lists the node's UNREPLIED SYN_SENT conntrack entries to vip
// (IP:port) whose DNAT target is no current Pod.
func staleSYNs(t *testing.T, n *Node, vip string) string {
	host, port, _ := net.SplitHostPort(vip)
	t.Helper()
	pods, err := n.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list Pods: %v", err)
	}
	live := map[string]bool{}
	for _, p := range pods.Items {
		live[p.Status.PodIP] = true
	}
	out, err := theLab.Exec(context.Background(), theLab.NodeNS, "conntrack", "-L", "-p", "tcp", "--state", "SYN_SENT",
		"--orig-dst", host, "--dport", port)
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	var stale []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		for i, w := range f {
			// The reply tuple's src is the DNAT target.
			if w == "[UNREPLIED]" && i+1 < len(f) {
				if ip := strings.TrimPrefix(f[i+1], "src="); !live[ip] {
					stale = append(stale, l)
				}
			}
		}
	}
	return strings.Join(stale, "\n")
}

// unreplied lists the node's conntrack entries of TCP connections that
// never got an answer: where the lost SYNs were DNATed to.
func unreplied() string {
	out, err := theLab.Exec(context.Background(), theLab.NodeNS, "conntrack", "-L", "-p", "tcp", "--state", "SYN_SENT")
	if err != nil {
		return "conntrack -L: " + err.Error()
	}
	return "unanswered SYNs in the node's conntrack table:\n" + out
}

func TestMetricsFromNode(t *testing.T) {
	need(t)
	code, body, err := theLab.HTTPGet(context.Background(), theLab.NodeNS, "http://127.0.0.1:10249/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	lines := grepLines(body, "kubeproxy_sync_proxy_rules_duration_seconds_")
	count := -1
	for _, l := range strings.Split(lines, "\n") {
		if strings.Contains(l, "_count") || strings.Contains(l, "_sum") {
			t.Logf("%s", l)
		}
		if v, ok := strings.CutPrefix(l, "kubeproxy_sync_proxy_rules_duration_seconds_count "); ok {
			count, _ = strconv.Atoi(v)
		}
	}
	if count <= 0 {
		t.Fatalf("kubeproxy_sync_proxy_rules_duration_seconds_count = %d after the node served traffic, want > 0 in:\n%.2000s", count, body)
	}
}
