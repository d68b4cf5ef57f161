package model

import (
	"net/netip"
	"time"
)

// Service is the part of a v1.Service that proxyd acts on, as the informer
// converted it. Services proxyd must ignore (headless, ExternalName, another
// proxy's) never become a Service.
type Service struct {
	Namespace, Name string
	// UID names the object in Events; Created (creationTimestamp) decides
	// between two Services that claim one destination (see Conflict).
	UID                 string
	Created             time.Time
	ClusterIPs          []netip.Addr
	Ports               []ServicePortSpec
	InternalLocal       bool
	ExternalLocal       bool
	AffinitySeconds     int32
	TrafficDistribution string
	// ExternalIPs are spec.externalIPs; LoadBalancerIPs the VIP-mode
	// ingress addresses of a LoadBalancer Service.
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges are spec.loadBalancerSourceRanges: when set,
	// only these sources may use the load-balancer addresses.
	LoadBalancerSourceRanges []netip.Prefix
	// HealthCheckNodePort is spec.healthCheckNodePort of a LoadBalancer
	// with externalTrafficPolicy Local; 0 otherwise.
	HealthCheckNodePort uint16
}

// ServicePortSpec is one entry of spec.ports.
type ServicePortSpec struct {
	Name     string
	Protocol Protocol
	Port     uint16
	NodePort uint16
}

// EndpointSlice is the part of a discovery.k8s.io/v1 EndpointSlice proxyd
// acts on.
type EndpointSlice struct {
	Namespace, Name string
	ServiceName     string // label kubernetes.io/service-name
	Family          IPFamily
	Ports           []SlicePort
	Endpoints       []SliceEndpoint
}

// SlicePort is one entry of an EndpointSlice's ports; a port without a
// number is dropped by the informer.
type SlicePort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// SliceEndpoint is one entry of an EndpointSlice's endpoints, with the API's
// defaults for unset conditions already applied.
type SliceEndpoint struct {
	Addresses   []netip.Addr
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	Hints       *Hints
}

// Snapshot is the informers' view at one instant, keyed by object name.
type Snapshot struct {
	Node     Node
	Services map[NamespacedName]*Service
	Slices   map[NamespacedName]*EndpointSlice
	// ServiceCIDRs are the ranges ClusterIPs are allocated from (the
	// networking.k8s.io ServiceCIDR objects); empty when unknown.
	ServiceCIDRs []netip.Prefix
}
