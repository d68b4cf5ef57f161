package model

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Protocol is a Service port's L4 protocol, spelled as in the Kubernetes API.
type Protocol string

// The protocols a ClusterIP can carry.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Valid reports whether p is a protocol proxyd programs.
func (p Protocol) Valid() bool { return p == TCP || p == UDP || p == SCTP }

// Lower is the protocol as nftables and iptables spell it.
func (p Protocol) Lower() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return string(p)
}

// Number is the protocol's IANA number, as packet headers and the kernel
// carry it (0 for an invalid protocol).
func (p Protocol) Number() uint8 {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case SCTP:
		return 132
	}
	return 0
}

// ProtocolOf returns the protocol with IANA number n.
func ProtocolOf(n uint8) (Protocol, bool) {
	for _, p := range []Protocol{TCP, UDP, SCTP} {
		if p.Number() == n {
			return p, true
		}
	}
	return "", false
}

// IPFamily is an IP address family.
type IPFamily uint8

// The two families; a dual-stack Service has a ClusterIP in each.
const (
	IPv4 IPFamily = 4
	IPv6 IPFamily = 6
)

// FamilyOf returns the family of a.
func FamilyOf(a netip.Addr) IPFamily {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

func (f IPFamily) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// NamespacedName names an API object.
type NamespacedName struct{ Namespace, Name string }

func (n NamespacedName) String() string { return n.Namespace + "/" + n.Name }

// ServicePortKey identifies one port of one Service: the unit every backend
// programs (kube-proxy's ServicePortName plus the protocol).
type ServicePortKey struct {
	Namespace string
	Name      string
	Port      string // the port's name; "" for an unnamed single port
	Protocol  Protocol
}

// String is "namespace/name:port/protocol", stable and unique.
func (k ServicePortKey) String() string {
	return k.Namespace + "/" + k.Name + ":" + k.Port + "/" + string(k.Protocol)
}

// Service returns the key's Service name.
func (k ServicePortKey) Service() NamespacedName {
	return NamespacedName{Namespace: k.Namespace, Name: k.Name}
}

// Compare orders keys by namespace, name, port name, protocol.
func (k ServicePortKey) Compare(o ServicePortKey) int {
	for _, c := range [...][2]string{{k.Namespace, o.Namespace}, {k.Name, o.Name}, {k.Port, o.Port}, {string(k.Protocol), string(o.Protocol)}} {
		if c[0] != c[1] {
			if c[0] < c[1] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// Endpoint is one backend of a Service port after merging all its slices.
type Endpoint struct {
	IP          netip.Addr
	Port        uint16
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	Hints       *Hints // nil: no hints
}

// Hints are an endpoint's topology hints: the zones (hints.forZones) and
// the nodes (hints.forNodes) it should serve, each sorted, without
// repeats. Endpoints hold a pointer, shared by every port of one
// endpoint: most have none, and 8 bytes cost less than two slices.
type Hints struct {
	Zones []string
	Nodes []string
}

func (h *Hints) zones() []string {
	if h == nil {
		return nil
	}
	return h.Zones
}

func (h *Hints) nodes() []string {
	if h == nil {
		return nil
	}
	return h.Nodes
}

func (h *Hints) equal(o *Hints) bool {
	return h == o || slices.Equal(h.zones(), o.zones()) && slices.Equal(h.nodes(), o.nodes())
}

// normal returns h if it is sorted without repeats, else a copy that is;
// nil when it holds nothing.
func (h *Hints) normal() *Hints {
	if len(h.zones()) == 0 && len(h.nodes()) == 0 {
		return nil
	}
	if sortedSet(h.Zones) && sortedSet(h.Nodes) {
		return h
	}
	return &Hints{Zones: sortedCopy(h.Zones), Nodes: sortedCopy(h.Nodes)}
}

func sortedSet(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i-1] >= s[i] {
			return false
		}
	}
	return true
}

// AddrPort is the endpoint's destination.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, e.Port) }

// String is "ip:port".
func (e Endpoint) String() string { return e.AddrPort().String() }

// Equal reports whether e and o are the same endpoint in the same condition.
func (e Endpoint) Equal(o Endpoint) bool {
	return e.IP == o.IP && e.Port == o.Port && e.Ready == o.Ready && e.Serving == o.Serving &&
		e.Terminating == o.Terminating && e.NodeName == o.NodeName && e.Zone == o.Zone && e.Hints.equal(o.Hints)
}

// ServicePort is everything the node must program for one port of a Service.
type ServicePort struct {
	Key        ServicePortKey
	ClusterIPs []netip.Addr // at most one per family, primary first
	Port       uint16
	NodePort   uint16

	// InternalLocal is internalTrafficPolicy: Local.
	InternalLocal bool
	// ExternalLocal is externalTrafficPolicy: Local.
	ExternalLocal bool
	// AffinitySeconds is sessionAffinity ClientIP's timeout; 0 means none.
	AffinitySeconds int32
	// TrafficDistribution is spec.trafficDistribution ("" when unset).
	TrafficDistribution string
	// ExternalIPs are the externalIPs and VIP-mode load-balancer ingress
	// addresses: traffic to them is handled like NodePort traffic.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the load-balancer addresses among ExternalIPs.
	LoadBalancerIPs []netip.Addr
	// SourceRanges, when not empty, are the only sources allowed to reach
	// LoadBalancerIPs (loadBalancerSourceRanges, of the Service's
	// families; a range that allows everything empties it).
	SourceRanges []netip.Prefix
	// HealthCheckNodePort is where the node reports, for load balancers,
	// whether it has local endpoints (0: no health check).
	HealthCheckNodePort uint16

	// Endpoints are all the port's endpoints, deduplicated, sorted by
	// address, in any condition.
	Endpoints []Endpoint
	// ClusterEndpoints are the endpoints traffic to a ClusterIP from this
	// node may use (see SelectEndpoints); empty means reject.
	ClusterEndpoints []Endpoint
	// ExternalEndpoints are those that traffic to the NodePort or an
	// external IP may use: ClusterEndpoints, or the node's own with
	// externalTrafficPolicy Local (see SelectExternalEndpoints).
	ExternalEndpoints []Endpoint
}

// HasExternal reports whether the port takes traffic from outside the
// cluster: a NodePort or an external address.
func (s *ServicePort) HasExternal() bool { return s.NodePort != 0 || len(s.ExternalIPs) > 0 }

// ClusterIP returns the port's ClusterIP of family f, if it has one.
func (s *ServicePort) ClusterIP(f IPFamily) (netip.Addr, bool) {
	for _, ip := range s.ClusterIPs {
		if FamilyOf(ip) == f {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// EndpointsOf returns the subset of eps of family f.
func EndpointsOf(eps []Endpoint, f IPFamily) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if FamilyOf(e.IP) == f {
			out = append(out, e)
		}
	}
	return out
}

// Equal reports whether s and o program the same rules.
func (s *ServicePort) Equal(o *ServicePort) bool {
	if s.Key != o.Key || !slices.Equal(s.ClusterIPs, o.ClusterIPs) || s.Port != o.Port ||
		s.NodePort != o.NodePort || s.InternalLocal != o.InternalLocal || s.ExternalLocal != o.ExternalLocal ||
		s.AffinitySeconds != o.AffinitySeconds || s.TrafficDistribution != o.TrafficDistribution ||
		!slices.Equal(s.ExternalIPs, o.ExternalIPs) || !slices.Equal(s.LoadBalancerIPs, o.LoadBalancerIPs) ||
		!slices.Equal(s.SourceRanges, o.SourceRanges) || s.HealthCheckNodePort != o.HealthCheckNodePort {
		return false
	}
	return slices.EqualFunc(s.Endpoints, o.Endpoints, Endpoint.Equal) &&
		slices.EqualFunc(s.ClusterEndpoints, o.ClusterEndpoints, Endpoint.Equal) &&
		slices.EqualFunc(s.ExternalEndpoints, o.ExternalEndpoints, Endpoint.Equal)
}

func (s *ServicePort) String() string {
	return fmt.Sprintf("%s %v:%s (%d endpoints, %d usable)", s.Key, s.ClusterIPs, strconv.Itoa(int(s.Port)), len(s.Endpoints), len(s.ClusterEndpoints))
}

// Destination is one place clients send a service port's traffic to: a
// ClusterIP, external or load-balancer IP with the port, or, with an
// unspecified address (0.0.0.0 or ::), the NodePort on any node address.
type Destination struct {
	Protocol Protocol
	Addr     netip.AddrPort
}

// Compare orders destinations by address, then protocol.
func (d Destination) Compare(o Destination) int {
	if c := d.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	return strings.Compare(string(d.Protocol), string(o.Protocol))
}

// Destinations lists where clients send s's traffic: every ClusterIP and
// external IP at Port, and the NodePort once per ClusterIP family.
func (s *ServicePort) Destinations() []Destination {
	out := make([]Destination, 0, len(s.ClusterIPs)*2+len(s.ExternalIPs))
	for _, ip := range slices.Concat(s.ClusterIPs, s.ExternalIPs) {
		out = append(out, Destination{Protocol: s.Key.Protocol, Addr: netip.AddrPortFrom(ip, s.Port)})
	}
	if s.NodePort != 0 {
		for _, ip := range s.ClusterIPs {
			everywhere := netip.IPv4Unspecified()
			if FamilyOf(ip) == IPv6 {
				everywhere = netip.IPv6Unspecified()
			}
			out = append(out, Destination{Protocol: s.Key.Protocol, Addr: netip.AddrPortFrom(everywhere, s.NodePort)})
		}
	}
	return out
}

// Node is this node's identity as Build needs it.
type Node struct {
	Name  string
	Zone  string // topology.kubernetes.io/zone
	IPs   []netip.Addr
	Ready bool
	// Retiring is true while the Node is being deleted or carries the
	// cluster autoscaler's ToBeDeletedByClusterAutoscaler taint: /healthz
	// then answers 503 so load balancers drain the node, as kube-proxy's.
	Retiring bool
}

func (n Node) equal(o Node) bool {
	return n.Name == o.Name && n.Zone == o.Zone && n.Ready == o.Ready && n.Retiring == o.Retiring && slices.Equal(n.IPs, o.IPs)
}

// State is everything one node must program: the backends' whole input.
// A State is never mutated after Build returns it.
type State struct {
	Node     Node
	Services map[ServicePortKey]*ServicePort
	// ServiceCIDRs are the ClusterIP ranges: traffic to an address in them
	// that no service port claims is rejected.
	ServiceCIDRs []netip.Prefix
	// Conflicts are the claims Build settled (see Conflict): Services
	// contains only the winners' claims. Sorted; for reporting only.
	Conflicts []Conflict

	// byService indexes Services by Service name when a Builder made the
	// State (nil otherwise: PortsOf then scans).
	byService map[NamespacedName][]ServicePortKey
}

// Copy returns a State that the Builder which made s does not change
// later: its own map of the same service ports (which never change) and
// its own list of conflicts. For readers on other goroutines.
func (s *State) Copy() *State {
	c := *s
	c.Services = maps.Clone(s.Services)
	c.Conflicts = slices.Clone(s.Conflicts)
	c.byService = nil
	return &c
}

// PortsOf returns the service ports of the Service n, in no order.
func (s *State) PortsOf(n NamespacedName) []*ServicePort {
	var out []*ServicePort
	if s.byService != nil {
		for _, k := range s.byService[n] {
			out = append(out, s.Services[k])
		}
		return out
	}
	for k, sp := range s.Services {
		if k.Service() == n {
			out = append(out, sp)
		}
	}
	return out
}

// ClusterIPs returns every ClusterIP of family f that some port uses,
// sorted and without duplicates.
func (s *State) ClusterIPs(f IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, sp := range s.Services {
		if ip, ok := sp.ClusterIP(f); ok {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// Sorted returns the service ports ordered by key, for deterministic output.
func (s *State) Sorted() []*ServicePort {
	out := make([]*ServicePort, 0, len(s.Services))
	for _, sp := range s.Services {
		out = append(out, sp)
	}
	slices.SortFunc(out, func(a, b *ServicePort) int { return a.Key.Compare(b.Key) })
	return out
}

// Families returns the IP families that any service port of s uses.
func (s *State) Families() []IPFamily {
	var has4, has6 bool
	for _, sp := range s.Services {
		for _, ip := range sp.ClusterIPs {
			if FamilyOf(ip) == IPv4 {
				has4 = true
			} else {
				has6 = true
			}
		}
	}
	var out []IPFamily
	if has4 {
		out = append(out, IPv4)
	}
	if has6 {
		out = append(out, IPv6)
	}
	return out
}
