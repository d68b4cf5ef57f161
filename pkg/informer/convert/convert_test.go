package convert

import (
	"net/netip"
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/pkg/informer/convert/converttest"
	"github.com/proxyd/proxyd/pkg/model"
)

func ptr[T any](v T) *T { return &v }

// The fixtures: a valid Service ns/web and a valid slice of it.
var (
	service   = converttest.Service
	slice     = converttest.Slice
	withLabel = converttest.WithLabel
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func modelService(edits ...func(*model.Service)) *model.Service {
	m := &model.Service{
		Namespace:  "ns",
		Name:       "web",
		ClusterIPs: addrs("10.0.0.1"),
		Ports:      []model.ServicePortSpec{{Name: "http", Protocol: model.TCP, Port: 80}},
	}
	for _, e := range edits {
		e(m)
	}
	return m
}

func TestConvertService(t *testing.T) {
	tests := []struct {
		name      string
		proxyName string
		in        *v1.Service
		want      *model.Service
	}{
		{name: "a plain ClusterIP service is converted", in: service(), want: modelService()},
		{name: "external IPs are kept and malformed ones dropped",
			in:   service(func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.10", "bogus"} }),
			want: modelService(func(m *model.Service) { m.ExternalIPs = addrs("192.0.2.10") })},
		{name: "a LoadBalancer's VIP-mode ingress IPs are kept, Proxy-mode ones and hostnames are not",
			in: service(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				proxy := v1.LoadBalancerIPModeProxy
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.1"}, {IP: "198.51.100.2", IPMode: &proxy}, {Hostname: "lb.example"}}
			}),
			want: modelService(func(m *model.Service) { m.LoadBalancerIPs = addrs("198.51.100.1") })},
		{name: "a LoadBalancer's source ranges are kept, padded ones trimmed and malformed ones dropped",
			in: service(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{" 192.0.2.0/24 ", "bogus", "2001:db8::/64"}
			}),
			want: modelService(func(m *model.Service) {
				m.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64")}
			})},
		{name: "the health check node port of a Local LoadBalancer is kept",
			in: service(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32100
			}),
			want: modelService(func(m *model.Service) { m.ExternalLocal, m.HealthCheckNodePort = true, 32100 })},
		{name: "a health check node port without externalTrafficPolicy Local is ignored",
			in: service(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.HealthCheckNodePort = 32100
			}),
			want: modelService()},
		{name: "a nil service is ignored", in: nil, want: nil},
		{name: "an ExternalName service is ignored",
			in: service(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
				s.Spec.ExternalName = "example.com"
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
			})},
		{name: "a headless service with clusterIP None is ignored",
			in: service(func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} })},
		{name: "a service labelled headless is ignored",
			in: service(withLabel(v1.IsHeadlessService, ""))},
		{name: "a service without a cluster IP is ignored",
			in: service(func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil })},
		{name: "a service for another proxy is ignored",
			in: service(withLabel(LabelServiceProxyName, "other"))},
		{name: "a service for another proxy is ignored even when we have a name",
			proxyName: "proxyd",
			in:        service(withLabel(LabelServiceProxyName, "other"))},
		{name: "a service naming our proxy is converted",
			proxyName: "proxyd",
			in:        service(withLabel(LabelServiceProxyName, "proxyd")),
			want:      modelService()},
		{name: "a service with an empty proxy-name label is not ours",
			in: service(withLabel(LabelServiceProxyName, ""))},
		{name: "an unlabelled service is converted when we have a name",
			proxyName: "proxyd", in: service(), want: modelService()},
		{name: "a dual-stack service keeps both cluster IPs in order",
			in:   service(func(s *v1.Service) { s.Spec.ClusterIPs = []string{"fd00::1", "10.0.0.1"}; s.Spec.ClusterIP = "fd00::1" }),
			want: modelService(func(m *model.Service) { m.ClusterIPs = addrs("fd00::1", "10.0.0.1") })},
		{name: "clusterIP is used when clusterIPs is empty",
			in:   service(func(s *v1.Service) { s.Spec.ClusterIPs = nil }),
			want: modelService()},
		{name: "a malformed cluster IP is dropped and the rest kept",
			in:   service(func(s *v1.Service) { s.Spec.ClusterIPs = []string{"10.0.0.300", "fd00::1"} }),
			want: modelService(func(m *model.Service) { m.ClusterIPs = addrs("fd00::1") })},
		{name: "a service whose only cluster IP is malformed is ignored",
			in: service(func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "bogus", []string{"bogus"} })},
		{name: "an empty port protocol defaults to TCP",
			in:   service(func(s *v1.Service) { s.Spec.Ports[0].Protocol = "" }),
			want: modelService()},
		{name: "ports keep name, protocol, port and node port",
			in: service(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports = []v1.ServicePort{
					{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, NodePort: 30053},
					{Name: "sctp", Protocol: v1.ProtocolSCTP, Port: 9000},
				}
			}),
			want: modelService(func(m *model.Service) {
				m.Ports = []model.ServicePortSpec{
					{Name: "dns", Protocol: model.UDP, Port: 53, NodePort: 30053},
					{Name: "sctp", Protocol: model.SCTP, Port: 9000},
				}
			})},
		{name: "a port with an out-of-range number is dropped",
			in: service(func(s *v1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "bad", Port: 70000}, v1.ServicePort{Name: "zero"})
			}),
			want: modelService()},
		{name: "an out-of-range node port becomes none",
			in:   service(func(s *v1.Service) { s.Spec.Ports[0].NodePort = -1 }),
			want: modelService()},
		{name: "traffic policies Local are converted",
			in: service(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: modelService(func(m *model.Service) { m.InternalLocal, m.ExternalLocal = true, true })},
		{name: "traffic policies Cluster are not Local",
			in: service(func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyCluster)
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
			}),
			want: modelService()},
		{name: "ClientIP affinity without a config uses the default timeout",
			in:   service(func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }),
			want: modelService(func(m *model.Service) { m.AffinitySeconds = 10800 })},
		{name: "ClientIP affinity uses the configured timeout",
			in: service(func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr[int32](60)}}
			}),
			want: modelService(func(m *model.Service) { m.AffinitySeconds = 60 })},
		{name: "an affinity config without ClientIP affinity is ignored",
			in: service(func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityNone
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr[int32](60)}}
			}),
			want: modelService()},
		{name: "IPv4 addresses with leading zeros are read as decimal, as kube-proxy reads them",
			in: service(func(s *v1.Service) {
				s.Spec.ClusterIPs, s.Spec.ExternalIPs = []string{"010.000.000.001"}, []string{"192.000.002.010"}
			}),
			want: modelService(func(m *model.Service) { m.ClusterIPs, m.ExternalIPs = addrs("10.0.0.1"), addrs("192.0.2.10") })},
		{name: "an address with an IPv6 zone is dropped",
			in: service(func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.0.0.1", "fd00::1"}
				s.Spec.ExternalIPs = []string{"fd00::5%eth0", "fd00::6"}
			}),
			want: modelService(func(m *model.Service) { m.ClusterIPs, m.ExternalIPs = addrs("10.0.0.1", "fd00::1"), addrs("fd00::6") })},
		{name: "an external IP of a family the Service has no cluster IP of is dropped",
			in:   service(func(s *v1.Service) { s.Spec.ExternalIPs = []string{"fd00::6", "192.0.2.1"} }),
			want: modelService(func(m *model.Service) { m.ExternalIPs = addrs("192.0.2.1") })},
		{name: "a port with a protocol proxyd does not program is dropped",
			in: service(func(s *v1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "icmp", Protocol: "ICMP", Port: 7})
			}),
			want: modelService()},
		{name: "trafficDistribution is carried over",
			in:   service(func(s *v1.Service) { s.Spec.TrafficDistribution = ptr(v1.ServiceTrafficDistributionPreferClose) }),
			want: modelService(func(m *model.Service) { m.TrafficDistribution = "PreferClose" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := Service(tt.in, tt.proxyName)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ConvertService:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConversionsNameWhatTheyLeaveOut(t *testing.T) {
	drops := func(ds []Drop) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.String())
		}
		return out
	}
	tests := []struct {
		name string
		got  []Drop
		want []string
	}{
		{name: "a Service",
			got: func() []Drop {
				_, ds := Service(service(func(s *v1.Service) {
					s.Spec.ClusterIPs = []string{"10.0.0.1", "bogus"}
					s.Spec.ExternalIPs = []string{"fd00::1%eth0", "fd00::1"}
					s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "x", Protocol: "ICMP", Port: 1}, v1.ServicePort{Name: "y", Port: 0})
				}), "")
				return ds
			}(),
			want: []string{
				`spec.clusterIPs[1] "bogus": not an IP address`,
				`spec.ports[1].protocol "ICMP": not a protocol proxyd programs (TCP, UDP, SCTP): the port is not proxied`,
				`spec.ports[2].port "0": not a port number (1-65535): the port is not proxied`,
				`spec.externalIPs[0] "fd00::1%eth0": an address with an IPv6 zone names an interface of another host`,
				`spec.externalIPs[1] "fd00::1": the Service has no IPv6 cluster IP`,
			}},
		{name: "a Service without a usable cluster IP",
			got: func() []Drop {
				_, ds := Service(service(func(s *v1.Service) { s.Spec.ClusterIPs = []string{"fd00::1%eth0"} }), "")
				return ds
			}(),
			want: []string{
				`spec.clusterIPs[0] "fd00::1%eth0": an address with an IPv6 zone names an interface of another host`,
				`no usable cluster IP: the Service is not proxied`,
			}},
		{name: "an EndpointSlice",
			got: func() []Drop {
				_, ds := EndpointSlice(slice(func(es *discovery.EndpointSlice) {
					es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr("all")})
					es.Endpoints[0].Addresses = []string{"10.1.0.1", "fd00::1"}
					es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{"nope"}})
				}), "")
				return ds
			}(),
			want: []string{
				`ports[1].port "": no port number: the port is not proxied`,
				`endpoints[0].addresses[1] "fd00::1": not an address of the slice's type IPv4`,
				`endpoints[1].addresses[0] "nope": not an IP address`,
				`endpoints[1] "": no usable address: the endpoint is not used`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := drops(tt.got); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("drops:\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func modelSlice(edits ...func(*model.EndpointSlice)) *model.EndpointSlice {
	m := &model.EndpointSlice{
		Namespace: "ns", Name: "web-abc", ServiceName: "web", Family: model.IPv4,
		Ports: []model.SlicePort{{Name: "http", Protocol: model.TCP, Port: 8080}},
		Endpoints: []model.SliceEndpoint{{
			Addresses: addrs("10.1.0.1"), Ready: true, Serving: true,
			NodeName: "node-a", Zone: "zone-a",
		}},
	}
	for _, e := range edits {
		e(m)
	}
	return m
}

func TestConvertEndpointSlice(t *testing.T) {
	tests := []struct {
		name      string
		proxyName string
		in        *discovery.EndpointSlice
		want      *model.EndpointSlice
	}{
		{name: "a plain IPv4 slice is converted", in: slice(), want: modelSlice()},
		{name: "a nil slice is ignored", in: nil, want: nil},
		{name: "an IPv6 slice is converted",
			in: slice(func(es *discovery.EndpointSlice) {
				es.AddressType = discovery.AddressTypeIPv6
				es.Endpoints[0].Addresses = []string{"fd00::5"}
			}),
			want: modelSlice(func(m *model.EndpointSlice) {
				m.Family = model.IPv6
				m.Endpoints[0].Addresses = addrs("fd00::5")
			})},
		{name: "an FQDN slice is ignored",
			in: slice(func(es *discovery.EndpointSlice) {
				es.AddressType = discovery.AddressTypeFQDN
				es.Endpoints[0].Addresses = []string{"db.example.com"}
			})},
		{name: "a slice without the service-name label is ignored",
			in: slice(func(es *discovery.EndpointSlice) { delete(es.Labels, discovery.LabelServiceName) })},
		{name: "a headless service's slice is ignored",
			in: slice(func(es *discovery.EndpointSlice) { es.Labels[v1.IsHeadlessService] = "" })},
		{name: "another proxy's slice is ignored",
			in: slice(func(es *discovery.EndpointSlice) { es.Labels[LabelServiceProxyName] = "other" })},
		{name: "our proxy's slice is converted",
			proxyName: "proxyd",
			in:        slice(func(es *discovery.EndpointSlice) { es.Labels[LabelServiceProxyName] = "proxyd" }),
			want:      modelSlice()},
		{name: "a port with a nil number is dropped",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr("all")})
			}),
			want: modelSlice()},
		{name: "a port's nil name and protocol default to empty and TCP",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Ports = []discovery.EndpointPort{{Port: ptr[int32](8080)}}
			}),
			want: modelSlice(func(m *model.EndpointSlice) { m.Ports[0].Name = "" })},
		{name: "a port with an out-of-range number is dropped",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr("big"), Port: ptr[int32](65536)})
			}),
			want: modelSlice()},
		{name: "nil conditions mean ready, serving and not terminating",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Endpoints[0].Conditions = discovery.EndpointConditions{}
			}),
			want: modelSlice()},
		{name: "a nil serving condition follows ready",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Endpoints[0].Conditions = discovery.EndpointConditions{Ready: ptr(false)}
			}),
			want: modelSlice(func(m *model.EndpointSlice) { m.Endpoints[0].Ready, m.Endpoints[0].Serving = false, false })},
		{name: "a terminating endpoint that still serves is kept as such",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Endpoints[0].Conditions = discovery.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}
			}),
			want: modelSlice(func(m *model.EndpointSlice) {
				m.Endpoints[0].Ready, m.Endpoints[0].Serving, m.Endpoints[0].Terminating = false, true, true
			})},
		{name: "nil node name and zone are empty",
			in:   slice(func(es *discovery.EndpointSlice) { es.Endpoints[0].NodeName, es.Endpoints[0].Zone = nil, nil }),
			want: modelSlice(func(m *model.EndpointSlice) { m.Endpoints[0].NodeName, m.Endpoints[0].Zone = "", "" })},
		{name: "zone and node hints are carried over",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Endpoints[0].Hints = &discovery.EndpointHints{
					ForZones: []discovery.ForZone{{Name: "zone-a"}, {Name: "zone-b"}},
					ForNodes: []discovery.ForNode{{Name: "node-a"}},
				}
			}),
			want: modelSlice(func(m *model.EndpointSlice) {
				m.Endpoints[0].Hints = &model.Hints{Zones: []string{"zone-a", "zone-b"}, Nodes: []string{"node-a"}}
			})},
		{name: "malformed and wrong-family addresses are dropped",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Endpoints[0].Addresses = []string{"10.1.0.999", "fd00::1", "10.1.0.2"}
			}),
			want: modelSlice(func(m *model.EndpointSlice) { m.Endpoints[0].Addresses = addrs("10.1.0.2") })},
		{name: "an address with a zone is dropped and leading zeros are decimal",
			in: slice(func(es *discovery.EndpointSlice) {
				es.AddressType = discovery.AddressTypeIPv6
				es.Endpoints[0].Addresses = []string{"fe80::1%eth0", "fd00::1"}
				es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{"fd00::2%1"}})
			}),
			want: modelSlice(func(m *model.EndpointSlice) { m.Family, m.Endpoints[0].Addresses = model.IPv6, addrs("fd00::1") })},
		{name: "an IPv4 endpoint with leading zeros is read as decimal",
			in:   slice(func(es *discovery.EndpointSlice) { es.Endpoints[0].Addresses = []string{"010.001.000.001"} }),
			want: modelSlice()},
		{name: "a port with a protocol proxyd does not program is dropped",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr("x"), Protocol: ptr(v1.Protocol("ICMP")), Port: ptr[int32](1)})
			}),
			want: modelSlice()},
		{name: "an endpoint left without addresses is dropped",
			in: slice(func(es *discovery.EndpointSlice) {
				es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{"garbage"}})
			}),
			want: modelSlice()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := EndpointSlice(tt.in, tt.proxyName)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ConvertEndpointSlice:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConvertNode(t *testing.T) {
	tests := []struct {
		name string
		in   *v1.Node
		want model.Node
	}{
		{name: "a nil node is the zero node", in: nil, want: model.Node{}},
		{name: "a bare node has only its name", in: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, want: model.Node{Name: "n1"}},
		{name: "zone, internal then external addresses and readiness are read",
			in: &v1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}},
				Status: v1.NodeStatus{
					Addresses: []v1.NodeAddress{
						{Type: v1.NodeExternalIP, Address: "203.0.113.7"},
						{Type: v1.NodeHostName, Address: "n1"},
						{Type: v1.NodeInternalIP, Address: "192.168.0.7"},
						{Type: v1.NodeInternalIP, Address: "fd00::7"},
						{Type: v1.NodeInternalIP, Address: "not-an-ip"},
						{Type: v1.NodeExternalIP, Address: "192.168.0.7"},
					},
					Conditions: []v1.NodeCondition{
						{Type: v1.NodeMemoryPressure, Status: v1.ConditionFalse},
						{Type: v1.NodeReady, Status: v1.ConditionTrue},
					},
				},
			},
			want: model.Node{Name: "n1", Zone: "zone-a", IPs: addrs("192.168.0.7", "fd00::7", "203.0.113.7"), Ready: true}},
		{name: "a node being deleted is retiring",
			in:   &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", DeletionTimestamp: &metav1.Time{}}},
			want: model.Node{Name: "n1", Retiring: true}},
		{name: "a node the cluster autoscaler tainted for deletion is retiring",
			in: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
				Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: "other", Effect: v1.TaintEffectNoSchedule}, {Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}},
			want: model.Node{Name: "n1", Retiring: true}},
		{name: "a Ready condition of Unknown is not ready",
			in: &v1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: "n1"},
				Status:     v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionUnknown}}},
			},
			want: model.Node{Name: "n1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := Node(tt.in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ConvertNode:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
