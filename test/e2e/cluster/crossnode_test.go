//go:build e2ecluster

package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The cross-node paths of a Service proxy, with real packets between two
// kubelet nodes: the endpoint "remote" runs on node2 only, clients sit in
// the control plane's namespace (outside the cluster, 10.88.0.2) and in
// Pods on each node.
const (
	testNS     = "crossnode"
	agnhost    = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	externalIP = "192.0.2.10" // routed to node1 from the control plane's namespace
	answerWait = 20 * time.Second
)

var (
	fixOnce sync.Once
	fixErr  error
)

// setup creates the namespace, the netexec Pods (remote on node2) and the
// client Pods (one a node), once.
func setup(t *testing.T) *Cluster {
	t.Helper()
	c := need(t)
	fixOnce.Do(func() { fixErr = makeFixture(c) })
	if fixErr != nil {
		t.Fatalf("fixture: %v", fixErr)
	}
	return c
}

func makeFixture(c *Cluster) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for _, p := range []*corev1.Pod{
		netexecPod("remote", "node2", "remote"),
		clientPod("client-node1", "node1"),
		clientPod("client-node2", "node2"),
	} {
		if _, err := c.Client.CoreV1().Pods(testNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	if _, err := c.WaitPodsReady(ctx, testNS, "role", 3, 2*time.Minute); err != nil {
		return err
	}
	// An external client reaches the external IP through node1.
	return lab.IP(c.Lab.NodeNS, "route replace "+externalIP+"/32 via "+NodeIP(1))
}

func netexecPod(name, nodeName, app string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app, "role": "server"}},
		Spec: corev1.PodSpec{
			NodeName:                      nodeName,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "netexec", Image: agnhost, ImagePullPolicy: corev1.PullIfNotPresent,
				Args: []string{"netexec", "--http-port=8080", "--udp-port=8081"},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/hostname", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1, FailureThreshold: 1,
				},
			}},
		},
	}
}

func clientPod(name, nodeName string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": "client"}},
		Spec: corev1.PodSpec{
			NodeName:                      nodeName,
			TerminationGracePeriodSeconds: &grace,
			Containers:                    []corev1.Container{{Name: "pause", Image: agnhost, ImagePullPolicy: corev1.PullIfNotPresent, Args: []string{"pause"}}},
		},
	}
}

// service creates a Service for app=app with HTTP 80→8080 and UDP 81→8081;
// mutate adjusts it first. It waits until the Service's slices list want
// ready endpoints.
func service(t *testing.T, c *Cluster, name, app string, want int, mutate func(*corev1.Service)) *corev1.Service {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": app},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
				{Name: "udp", Port: 81, TargetPort: intstr.FromInt32(8081), Protocol: corev1.ProtocolUDP},
			},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	svc, err := c.Client.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Client.CoreV1().Services(testNS).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	if err := c.Nodes[0].WaitReadyEndpoints(ctx, testNS, name, want, time.Minute); err != nil {
		t.Fatal(err)
	}
	return svc
}

// get sends GET url from the network namespace ns until it answers 200 (or
// answerWait passes: proxies program asynchronously) and returns the body.
func get(t *testing.T, c *Cluster, ns, url string) string {
	t.Helper()
	deadline := time.Now().Add(answerWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		code, body, err := c.Lab.HTTPGet(ctx, ns, url)
		cancel()
		if err == nil && code == 200 {
			return strings.TrimSpace(body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s from %s: %d %q %v", url, ns, code, body, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// noAnswer asserts that url does not answer from ns, repeatedly for 3 s:
// the proxy drops (not refuses, not serves) the connection.
func noAnswer(t *testing.T, c *Cluster, ns, url string) {
	t.Helper()
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		code, body, err := c.Lab.HTTPGet(ctx, ns, url)
		cancel()
		if err == nil {
			t.Fatalf("GET %s from %s answered %d %q; want the connection dropped", url, ns, code, body)
		}
		if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("GET %s from %s: %v; want a timeout (dropped), not another error", url, ns, err)
		}
	}
}

func podNetns(t *testing.T, c *Cluster, node int, pod string) string {
	t.Helper()
	ns, err := c.Nodes[node-1].PodNetnsOf(context.Background(), testNS, pod)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func podIP(t *testing.T, c *Cluster, pod string) string {
	t.Helper()
	p, err := c.Client.CoreV1().Pods(testNS).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}

func hostOf(clientIP string) string {
	h, _, err := net.SplitHostPort(clientIP)
	if err != nil {
		return clientIP
	}
	return h
}

func TestNodePortAndExternalIPReachAnEndpointOnAnotherNode(t *testing.T) {
	c := setup(t)
	svc := service(t, c, "cluster-policy", "remote", 1, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalIPs = []string{externalIP}
	})
	np := strconv.Itoa(int(svc.Spec.Ports[0].NodePort))
	for _, tc := range []struct{ name, addr string }{
		{"NodePort of node1", NodeIP(1) + ":" + np},
		{"external IP routed to node1", externalIP + ":80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(t, c, c.Lab.NodeNS, "http://"+tc.addr+"/hostname"); got != "remote" {
				t.Fatalf("answered by %q, want remote (on node2)", got)
			}
			// node1 must masquerade, or node2's Pod would answer the client
			// directly and the reply would not match the client's connection.
			if got := hostOf(get(t, c, c.Lab.NodeNS, "http://"+tc.addr+"/clientip")); got != NodeIP(1) {
				t.Fatalf("the endpoint saw source %s, want node1's %s (masqueraded)", got, NodeIP(1))
			}
		})
	}
}

func TestExternalTrafficPolicyLocalServesOnlyWhereTheEndpointIsAndKeepsTheSource(t *testing.T) {
	c := setup(t)
	svc := service(t, c, "local-policy", "remote", 1, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer // the only type with a health check node port
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	np := strconv.Itoa(int(svc.Spec.Ports[0].NodePort))
	hc := strconv.Itoa(int(svc.Spec.HealthCheckNodePort))
	if hc == "0" {
		t.Fatal("no healthCheckNodePort allocated")
	}
	t.Run("node2, which has the endpoint, serves and the endpoint sees the client's own address", func(t *testing.T) {
		if got := hostOf(get(t, c, c.Lab.NodeNS, "http://"+NodeIP(2)+":"+np+"/clientip")); got != ControlPlaneIP {
			t.Fatalf("the endpoint saw source %s, want the client's %s", got, ControlPlaneIP)
		}
	})
	t.Run("node1, which has none, drops", func(t *testing.T) {
		noAnswer(t, c, c.Lab.NodeNS, "http://"+NodeIP(1)+":"+np+"/hostname")
	})
	for _, tc := range []struct {
		node  int
		code  int
		local string
	}{
		// One Pod, two service ports: kube-proxy counts an endpoint once
		// per port, and so does proxyd.
		{2, 200, `"localEndpoints": 2`},
		{1, 503, `"localEndpoints": 0`},
	} {
		t.Run(fmt.Sprintf("health check node port of node%d answers %d", tc.node, tc.code), func(t *testing.T) {
			url := "http://" + NodeIP(tc.node) + ":" + hc + "/"
			deadline := time.Now().Add(answerWait)
			for {
				code, body, err := c.Lab.HTTPGet(context.Background(), c.Lab.NodeNS, url)
				if err == nil && code == tc.code && strings.Contains(body, tc.local) {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("GET %s: %d %q %v; want %d with %s", url, code, body, err, tc.code, tc.local)
				}
				time.Sleep(250 * time.Millisecond)
			}
		})
	}
}

func TestInternalTrafficPolicyLocalServesOnlyPodsOnTheEndpointsNode(t *testing.T) {
	c := setup(t)
	svc := service(t, c, "itp-local", "remote", 1, func(s *corev1.Service) {
		local := corev1.ServiceInternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = &local
	})
	url := "http://" + svc.Spec.ClusterIP + ":80"
	t.Run("a Pod on node2 reaches it and keeps its own source address", func(t *testing.T) {
		ns := podNetns(t, c, 2, "client-node2")
		if got := get(t, c, ns, url+"/hostname"); got != "remote" {
			t.Fatalf("answered by %q", got)
		}
		if got, want := hostOf(get(t, c, ns, url+"/clientip")), podIP(t, c, "client-node2"); got != want {
			t.Fatalf("the endpoint saw source %s, want the client Pod's %s", got, want)
		}
	})
	t.Run("a Pod on node1 is dropped", func(t *testing.T) {
		noAnswer(t, c, podNetns(t, c, 1, "client-node1"), url+"/hostname")
	})
}

// udpAsker sends "hostname" to addr over one UDP socket (one conntrack
// flow) from the network namespace ns every 100 ms and records who answers.
type udpAsker struct {
	mu      sync.Mutex
	answers []string // "" for a datagram without an answer
	stop    chan struct{}
	done    chan struct{}
}

func askUDP(t *testing.T, ns, addr string) *udpAsker {
	t.Helper()
	conn, err := lab.DialContext(ns)(context.Background(), "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := &udpAsker{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		defer conn.Close()
		buf := make([]byte, 256)
		for {
			select {
			case <-a.stop:
				return
			default:
			}
			_, _ = conn.Write([]byte("hostname"))
			_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, err := conn.Read(buf)
			ans := ""
			if err == nil {
				ans = strings.TrimSpace(string(buf[:n]))
			}
			a.mu.Lock()
			a.answers = append(a.answers, ans)
			a.mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	t.Cleanup(a.close)
	return a
}

func (a *udpAsker) close() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}

// since returns the answers after the first i.
func (a *udpAsker) since(i int) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.answers[i:]...)
}

func (a *udpAsker) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.answers)
}

func TestUDPFlowMovesWhenItsRemoteEndpointIsRemoved(t *testing.T) {
	c := setup(t)
	ctx := context.Background()
	pods := c.Client.CoreV1().Pods(testNS)
	// Only the remote endpoint at first, so the flow is pinned to it.
	if _, err := pods.Create(ctx, netexecPod("udp-remote", "node2", "udp"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range []string{"udp-remote", "udp-local"} {
			_ = pods.Delete(context.Background(), p, metav1.DeleteOptions{})
		}
	})
	svc := service(t, c, "udp-cycle", "udp", 1, nil)
	a := askUDP(t, podNetns(t, c, 1, "client-node1"), net.JoinHostPort(svc.Spec.ClusterIP, "81"))
	waitAnswer(t, a, 0, "udp-remote")
	if _, err := pods.Create(ctx, netexecPod("udp-local", "node1", "udp"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Nodes[0].WaitReadyEndpoints(ctx, testNS, "udp-cycle", 2, time.Minute); err != nil {
		t.Fatal(err)
	}
	// The flow stays where conntrack put it while that endpoint serves.
	mark := a.len()
	time.Sleep(3 * time.Second)
	for _, ans := range a.since(mark) {
		if ans != "udp-remote" {
			t.Fatalf("while udp-remote serves, the flow's answers were %v", a.since(mark))
		}
	}
	zero := int64(0)
	if err := pods.Delete(ctx, "udp-remote", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	mark = a.len()
	waitAnswer(t, a, mark, "udp-local")
	t.Logf("the flow moved to udp-local %.1fs after udp-remote was deleted", time.Since(removed).Seconds())
}

// waitAnswer waits until the asker's answers after the first i include
// want (for answerWait).
func waitAnswer(t *testing.T, a *udpAsker, i int, want string) {
	t.Helper()
	deadline := time.Now().Add(answerWait)
	for time.Now().Before(deadline) {
		for _, ans := range a.since(i) {
			if ans == want {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := a.since(i)
	if len(got) > 20 {
		got = got[len(got)-20:]
	}
	t.Fatalf("no answer from %s within %s; last answers %q", want, answerWait, got)
}
