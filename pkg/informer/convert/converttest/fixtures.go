// Package converttest holds valid API objects for tests of the
// conversions and the informer to edit.
package converttest

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func ptr[T any](v T) *T { return &v }

// Service returns a valid single-stack ClusterIP Service ns/web with one
// TCP port 80, changed by the given edits.
func Service(edits ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.0.0.1",
			ClusterIPs: []string{"10.0.0.1"},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
	for _, e := range edits {
		e(svc)
	}
	return svc
}

// WithLabel is an edit that sets the label k to v.
func WithLabel(k, v string) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

// Slice returns a valid IPv4 slice ns/web-abc for Service web with one
// port and one endpoint, changed by the given edits.
func Slice(edits ...func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns", Name: "web-abc",
			Labels: map[string]string{discovery.LabelServiceName: "web"},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr("http"), Protocol: ptr(v1.ProtocolTCP), Port: ptr[int32](8080)}},
		Endpoints: []discovery.Endpoint{{
			Addresses:  []string{"10.1.0.1"},
			Conditions: discovery.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
			NodeName:   ptr("node-a"),
			Zone:       ptr("zone-a"),
		}},
	}
	for _, e := range edits {
		e(es)
	}
	return es
}
