//go:build e2e

package e2e

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A dual-stack Service is balanced over the Pods' addresses of each family,
// from the client and from the node, in every dataplane.
func TestDualStackService(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	policy := v1.IPFamilyPolicyRequireDualStack
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dual", Namespace: "default"},
		Spec: v1.ServiceSpec{ClusterIP: "10.96.0.60", ClusterIPs: []string{"10.96.0.60", "fd00:10:96::60"},
			IPFamilyPolicy: &policy, IPFamilies: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol},
			Ports: []v1.ServicePort{{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80}}}}
	if _, err := e.cs.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.cs.CoreV1().Services("default").Delete(context.Background(), "dual", metav1.DeleteOptions{})
	})
	all := []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}
	port := svcPort{"tcp", v1.ProtocolTCP, 8080}
	e.createSlice(t, e.slice("dual-v4", "dual", all, port))
	v6 := e.slice("dual-v6", "dual", all, port)
	v6.AddressType = discovery.AddressTypeIPv6
	for i := range v6.Endpoints {
		v6.Endpoints[i].Addresses = []string{pods[i].IPv6}
	}
	e.createSlice(t, v6)

	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			px := e.startProxyd(t, dp.mode, dp.args...)
			defer px.stop(t)
			for _, vip := range []string{"10.96.0.60:80", "[fd00:10:96::60]:80"} {
				e.waitAnswers(t, vip+" answers", vip, 1)
				for _, ns := range []string{e.lab.ClientNS, e.lab.NodeNS} {
					r := e.traffic(t, ns, "tcp", vip, 300, 1)
					assertBalanced(t, vip+" from "+ns, r, 300, podNames(pods), 0.20, 0.47)
				}
			}
		})
	}
}
