package lab

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/proxyd/proxyd/internal/testenv"
)

// TestLabCarriesServiceTrafficWithUpstreamKubeProxy proves the lab's
// topology is fit for a Service proxy: upstream kube-proxy (nftables mode) in
// the node namespace, a selector-less Service with a hand-written
// EndpointSlice, and traffic to its ClusterIP from the client namespace
// (prerouting path) and from the node itself (output path).
func TestLabCarriesServiceTrafficWithUpstreamKubeProxy(t *testing.T) {
	needLab(t)
	kubeProxy := filepath.Join(os.Getenv("PROXYD_LAB_BIN"), "kube-proxy")
	if _, err := os.Stat(kubeProxy); err != nil {
		testenv.Skipf(t, "no upstream kube-proxy: %v", err)
	}
	l := startLab(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := l.Clientset()
	if err != nil {
		t.Fatal(err)
	}

	const vip = "10.96.0.10"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			ClusterIP: vip,
			Ports: []corev1.ServicePort{
				{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(EchoPort)},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(EchoPort)},
			},
		},
	}
	if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	ready := true
	port := int32(EchoPort)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "echo-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "echo"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: new("tcp"), Protocol: new(corev1.ProtocolTCP), Port: &port},
			{Name: new("udp"), Protocol: new(corev1.ProtocolUDP), Port: &port},
		},
	}
	for _, p := range l.Pods {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IP},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			NodeName:   &l.NodeName,
		})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create endpointslice: %v", err)
	}

	proxy, err := l.StartProcess(l.NodeNS, "kube-proxy.log", kubeProxy,
		"--kubeconfig="+l.ProxyKubeconfig,
		"--hostname-override="+l.NodeName,
		"--proxy-mode=nftables",
		"--cluster-cidr="+ClusterCIDRs,
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--conntrack-max-per-core=0",
	)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(vip, "80")
	begin := time.Now()
	for {
		res, err := l.TrafficWith(ctx, l.ClientNS, TrafficOptions{Proto: "tcp", Addr: addr, Count: 1, Timeout: 500 * time.Millisecond})
		if err == nil && res.Answered() == 1 {
			break
		}
		if proxy.Exited() || time.Since(begin) > 30*time.Second {
			t.Fatalf("service %s never answered (last %+v, %v); kube-proxy log:\n%s", addr, res, err, tailFile(proxy.Log, 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("service answered %.1fs after kube-proxy started", time.Since(begin).Seconds())

	for _, tc := range []struct {
		name, from, proto string
		count, perConn    int
	}{
		{"tcp from the client", l.ClientNS, "tcp", 300, 3},
		{"tcp from the node", l.NodeNS, "tcp", 300, 3},
		{"udp from the client", l.ClientNS, "udp", 150, 1},
		{"udp from the node", l.NodeNS, "udp", 150, 1},
	} {
		t.Run(tc.name+" reaches every pod", func(t *testing.T) {
			res, err := l.Traffic(ctx, tc.from, tc.proto, addr, tc.count, tc.perConn)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", res)
			if res.Failed() != 0 || res.StickyViolations != 0 {
				t.Errorf("errors or sticky violations: %+v", res)
			}
			for _, p := range l.Pods {
				// Expected count/3 each; count/10 only catches "never".
				if res.Counts[p.Name] < tc.count/10 {
					t.Errorf("%s got %d of %d connections", p.Name, res.Counts[p.Name], tc.count)
				}
			}
		})
	}
}
