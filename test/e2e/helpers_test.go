//go:build e2e

// Package e2e proves proxyd with real parts: a real etcd and kube-apiserver,
// proxyd as a process in a node network namespace, Pods as echo servers in
// their own namespaces and a client sending real connections.
package e2e

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/proxyd/proxyd/internal/testenv"
	"github.com/proxyd/proxyd/test/e2e/lab"
)

// env is one lab shared by the tests of a run.
type env struct {
	lab *lab.Lab
	cs  kubernetes.Interface
}

var shared *env

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		_ = shared.lab.Close()
	}
	os.Exit(code)
}

func needEnv(t *testing.T) *env {
	t.Helper()
	testenv.NeedRoot(t)
	if os.Getenv("PROXYD_LAB_BIN") == "" || os.Getenv("PROXYD_BIN") == "" {
		t.Fatal("PROXYD_LAB_BIN and PROXYD_BIN must be set (run `make e2e`)")
	}
	if shared != nil {
		return shared
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Six Pods: most tests use the first three, the balance test scales
	// a Service from three to six.
	l, err := lab.Start(ctx, lab.Config{Pods: 6, Logf: log.Printf})
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	cs, err := l.Clientset()
	if err != nil {
		_ = l.Close()
		t.Fatal(err)
	}
	shared = &env{lab: l, cs: cs}
	t.Logf("lab %s up in %v (apiserver ready in %v)", l.ID, l.StartDuration.Round(time.Millisecond), l.ReadyzDuration.Round(time.Millisecond))
	return shared
}

// proxyd is one running proxyd process in the node namespace.
type proxyd struct {
	proc *lab.Process
	mode string
}

func (e *env) startProxyd(t *testing.T, mode string, extra ...string) *proxyd {
	t.Helper()
	args := append([]string{os.Getenv("PROXYD_BIN"),
		"--mode", mode,
		"--kubeconfig", e.lab.ProxyKubeconfig,
		"--hostname-override", e.lab.NodeName,
		"--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56",
		"--metrics-bind-address", "127.0.0.1:10249",
		"--healthz-bind-address", "127.0.0.1:10256",
		"-v", "2",
	}, extra...)
	p, err := e.lab.StartProcess(e.lab.NodeNS, fmt.Sprintf("proxyd-%s-%d.log", mode, time.Now().UnixNano()), args...)
	if err != nil {
		t.Fatal(err)
	}
	px := &proxyd{proc: p, mode: mode}
	t.Cleanup(func() {
		px.stop(t)
		if t.Failed() {
			t.Logf("the last lines proxyd (%s) logged:\n%s", mode, tail(p.Log))
		}
	})
	e.eventually(t, 20*time.Second, "proxyd /healthz answers 200", func() error {
		if p.Exited() {
			return fmt.Errorf("proxyd exited: %v\n%s", p.Err(), tail(p.Log))
		}
		code, _, err := e.lab.HTTPGet(context.Background(), e.lab.NodeNS, "http://127.0.0.1:10256/healthz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	return px
}

// startDataplane runs proxyd in dp's mode for the rest of the (sub)test,
// then stops it and removes everything it wrote, so the next dataplane
// starts from a clean kernel.
func (e *env) startDataplane(t *testing.T, dp dataplane, extra ...string) *proxyd {
	t.Helper()
	px := e.startProxyd(t, dp.mode, append(slices.Clone(dp.args), extra...)...)
	t.Cleanup(func() {
		px.stop(t)
		_, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, os.Getenv("PROXYD_BIN"), "--cleanup")
	})
	return px
}

func (p *proxyd) stop(t *testing.T) {
	if p.proc.Exited() {
		return
	}
	if err := p.proc.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Logf("stop proxyd: %v", err)
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(string(b), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// eventually retries f every 50 ms until it succeeds or timeout passes.
func (e *env) eventually(t *testing.T, timeout time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = f(); err == nil {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}

// waitAnswers waits (10 s at most) until n TCP connections from the client
// to addr are all answered: the rules for addr are in place.
func (e *env) waitAnswers(t *testing.T, what, addr string, n int) {
	t.Helper()
	e.eventually(t, 10*time.Second, what, func() error {
		r, err := e.lab.Traffic(context.Background(), e.lab.ClientNS, "tcp", addr, n, 1)
		if err == nil && r.Answered() != n {
			err = errorf("%d of %d answered: %+v %v", r.Answered(), n, r.Errors, r.ErrorSamples)
		}
		return err
	})
}

func ptr[T any](v T) *T { return &v }

type svcPort struct {
	name  string
	proto v1.Protocol
	port  int32
}

func (e *env) createService(t *testing.T, name, clusterIP string, labels map[string]string, ports ...svcPort) *v1.Service {
	t.Helper()
	return e.createServiceWith(t, name, clusterIP, labels, nil, ports...)
}

// createServiceWith creates a Service, letting edit change its spec, and
// deletes it when the test ends.
func (e *env) createServiceWith(t *testing.T, name, clusterIP string, labels map[string]string, edit func(*v1.Service), ports ...svcPort) *v1.Service {
	t.Helper()
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec: v1.ServiceSpec{ClusterIP: clusterIP}}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: p.name, Protocol: p.proto, Port: p.port})
	}
	if edit != nil {
		edit(svc)
	}
	out, err := e.cs.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = e.cs.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return out
}

// endpoint is one Pod in a slice, with its readiness.
type endpoint struct {
	pod   lab.Pod
	ready bool
}

func (e *env) slice(name, svc string, eps []endpoint, ports ...svcPort) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
			Labels:      map[string]string{discovery.LabelServiceName: svc},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)}},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range ports {
		es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr(p.name), Protocol: ptr(p.proto), Port: ptr(p.port)})
	}
	for _, ep := range eps {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{
			Addresses:  []string{ep.pod.IP},
			Conditions: discovery.EndpointConditions{Ready: ptr(ep.ready), Serving: ptr(ep.ready), Terminating: ptr(false)},
			NodeName:   ptr("node2"),
		})
	}
	return es
}

func (e *env) createSlice(t *testing.T, es *discovery.EndpointSlice) *discovery.EndpointSlice {
	t.Helper()
	out, err := e.cs.DiscoveryV1().EndpointSlices("default").Create(context.Background(), es, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create slice %s: %v", es.Name, err)
	}
	t.Cleanup(func() {
		_ = e.cs.DiscoveryV1().EndpointSlices("default").Delete(context.Background(), es.Name, metav1.DeleteOptions{})
	})
	return out
}

// updateSlice writes es over the slice of its name.
func (e *env) updateSlice(t *testing.T, es *discovery.EndpointSlice) {
	t.Helper()
	if _, err := e.cs.DiscoveryV1().EndpointSlices("default").Update(context.Background(), es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// traffic sends count connections and fails the test on a lab error.
func (e *env) traffic(t *testing.T, ns, proto, addr string, count, perConn int) lab.ClientResult {
	t.Helper()
	r, err := e.lab.Traffic(context.Background(), ns, proto, addr, count, perConn)
	if err != nil {
		t.Fatalf("traffic %s %s from %s: %v", proto, addr, ns, err)
	}
	return r
}

// assertBalanced checks that every Pod got between lo and hi of count.
func assertBalanced(t *testing.T, what string, r lab.ClientResult, count int, pods []string, lo, hi float64) {
	t.Helper()
	// One failed connection in a run was seen once, in iptables-legacy
	// mode on a loaded machine, and not reproduced since; it is logged
	// loudly and tolerated once, anything more fails.
	switch f := r.Failed(); {
	case f > 1:
		t.Errorf("%s: %d of %d failed: %+v %v", what, f, count, r.Errors, r.ErrorSamples)
	case f == 1:
		t.Logf("WARNING %s: 1 of %d failed: %+v %v", what, count, r.Errors, r.ErrorSamples)
	}
	for _, p := range pods {
		share := float64(r.Counts[p]) / float64(count)
		if share < lo || share > hi {
			t.Errorf("%s: %s got %.1f%% (%d of %d), want %.0f%%-%.0f%%: %v", what, p, 100*share, r.Counts[p], count, 100*lo, 100*hi, r.Counts)
		}
	}
	for name := range r.Counts {
		found := false
		for _, p := range pods {
			found = found || p == name
		}
		if !found {
			t.Errorf("%s: %s answered but is not an endpoint: %v", what, name, r.Counts)
		}
	}
	t.Logf("%s: %v", what, r.Counts)
}

var syncCount = regexp.MustCompile(`(?m)^kubeproxy_sync_proxy_rules_duration_seconds_count (\d+)`)

func (e *env) metrics(t *testing.T) string {
	t.Helper()
	code, body, err := e.lab.HTTPGet(context.Background(), e.lab.NodeNS, "http://127.0.0.1:10249/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	return body
}

func syncs(body string) int {
	m := syncCount.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func podNames(pods []lab.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}
