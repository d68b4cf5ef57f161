package convert

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/pkg/model"
)

// list splits a fuzzed string into a list, "" into none.
func list(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// checkAddr fails the test for an address no rule can carry.
func checkAddr(t *testing.T, what string, ip netip.Addr) {
	t.Helper()
	if !ip.IsValid() || ip.Zone() != "" || ip.Is4In6() {
		t.Fatalf("%s %v reaches the model", what, ip)
	}
}

func checkDrops(t *testing.T, ds []Drop) {
	t.Helper()
	for _, d := range ds {
		if d.Reason == "" {
			t.Fatalf("a drop without a reason: %+v", d)
		}
	}
}

// FuzzConvertService feeds ConvertService Services with arbitrary
// addresses, ranges, ports and protocols: it must not panic, must be
// deterministic, and may only hand the model usable values.
func FuzzConvertService(f *testing.F) {
	f.Add("10.96.0.1,fd00::1", "192.0.2.1,fd00::1%eth0", "010.001.002.003", " 192.0.2.0/24 ,bogus", int32(80), int32(30080), "TCP", uint8(3), int32(32000))
	f.Add("None", "", "", "", int32(0), int32(-1), "ICMP", uint8(0), int32(0))
	f.Add("::ffff:10.0.0.1", "1.2.3.4", "fe80::1%25lo", "::/0", int32(70000), int32(65535), "", uint8(2), int32(-5))
	f.Fuzz(func(t *testing.T, clusterIPs, externalIPs, lbIPs, ranges string, port, nodePort int32, proto string, kind uint8, hc int32) {
		svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", Generation: 1},
			Spec: v1.ServiceSpec{
				Type:                     []v1.ServiceType{v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeExternalName, v1.ServiceTypeLoadBalancer}[kind%4],
				ClusterIPs:               list(clusterIPs),
				ExternalIPs:              list(externalIPs),
				LoadBalancerSourceRanges: list(ranges),
				HealthCheckNodePort:      hc,
				Ports: []v1.ServicePort{{Name: "a", Protocol: v1.Protocol(proto), Port: port, NodePort: nodePort},
					{Name: "b", Protocol: v1.ProtocolUDP, Port: port ^ 1}},
			}}
		if kind&4 != 0 {
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
		if len(svc.Spec.ClusterIPs) > 0 {
			svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
		}
		for _, ip := range list(lbIPs) {
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
		m, ds := Service(svc, "")
		checkDrops(t, ds)
		if again, ds2 := Service(svc, ""); !reflect.DeepEqual(m, again) || !reflect.DeepEqual(ds, ds2) {
			t.Fatalf("ConvertService is not deterministic")
		}
		if m == nil {
			return
		}
		families := map[model.IPFamily]bool{}
		for _, ip := range m.ClusterIPs {
			checkAddr(t, "cluster IP", ip)
			families[model.FamilyOf(ip)] = true
		}
		for _, ip := range append(append([]netip.Addr(nil), m.ExternalIPs...), m.LoadBalancerIPs...) {
			checkAddr(t, "external or load-balancer IP", ip)
			if !families[model.FamilyOf(ip)] {
				t.Fatalf("%v of a family the Service has no cluster IP of", ip)
			}
		}
		for _, p := range m.LoadBalancerSourceRanges {
			if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
				t.Fatalf("source range %v reaches the model", p)
			}
		}
		for _, p := range m.Ports {
			if p.Port == 0 || !p.Protocol.Valid() {
				t.Fatalf("port %+v reaches the model", p)
			}
		}
		if len(ds) == 0 && len(m.Ports) != len(svc.Spec.Ports) {
			t.Fatalf("%d of %d ports kept without a drop", len(m.Ports), len(svc.Spec.Ports))
		}
	})
}

// FuzzConvertEndpointSlice feeds ConvertEndpointSlice slices with
// arbitrary addresses, ports and conditions.
func FuzzConvertEndpointSlice(f *testing.F) {
	f.Add(uint8(0), "10.0.0.1,010.0.0.2", "10.0.0.3", "http", "TCP", int32(8080), uint8(7))
	f.Add(uint8(1), "fd00::1%eth0,fd00::2", "10.0.0.1", "", "SCTP", int32(0), uint8(0))
	f.Add(uint8(2), "db.example", "", "x", "ICMP", int32(-1), uint8(2))
	f.Fuzz(func(t *testing.T, typ uint8, first, second, portName, proto string, port int32, conds uint8) {
		es := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "s-1", Labels: map[string]string{discovery.LabelServiceName: "s"}},
			AddressType: []discovery.AddressType{discovery.AddressTypeIPv4, discovery.AddressTypeIPv6, discovery.AddressTypeFQDN}[typ%3],
			Ports:       []discovery.EndpointPort{{Name: &portName, Protocol: (*v1.Protocol)(&proto), Port: &port}},
		}
		flag := func(bit uint8) *bool {
			if conds&(1<<(bit+3)) != 0 {
				return nil
			}
			v := conds&(1<<bit) != 0
			return &v
		}
		for _, addrs := range []string{first, second} {
			es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: list(addrs),
				Conditions: discovery.EndpointConditions{Ready: flag(0), Serving: flag(1), Terminating: flag(2)}})
		}
		m, ds := EndpointSlice(es, "")
		checkDrops(t, ds)
		if again, ds2 := EndpointSlice(es, ""); !reflect.DeepEqual(m, again) || !reflect.DeepEqual(ds, ds2) {
			t.Fatalf("ConvertEndpointSlice is not deterministic")
		}
		if m == nil {
			return
		}
		for _, p := range m.Ports {
			if p.Port == 0 || !p.Protocol.Valid() {
				t.Fatalf("port %+v reaches the model", p)
			}
		}
		for _, ep := range m.Endpoints {
			if len(ep.Addresses) == 0 {
				t.Fatal("an endpoint without addresses reaches the model")
			}
			for _, ip := range ep.Addresses {
				checkAddr(t, "endpoint address", ip)
				if model.FamilyOf(ip) != m.Family {
					t.Fatalf("%v in a slice of family %v", ip, m.Family)
				}
			}
			if ep.Serving && !ep.Ready && flag(1) == nil {
				t.Fatalf("serving defaulted to true for a not-ready endpoint")
			}
		}
	})
}
