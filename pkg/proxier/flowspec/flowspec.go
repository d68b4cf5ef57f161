// Package flowspec is the one packet-flow specification every backend must
// satisfy: a State and a list of cases "this packet → one of these
// endpoints / rejected / untouched, masqueraded or not". Each backend
// provides a Tracer that evaluates its own rendered rules for a packet; the
// same cases run against the real kernel in the e2e tests, which is why the
// addresses match the lab (Pods 10.244.1.11-13, client 10.244.1.100).
package flowspec

import (
	"net/netip"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Packet is the first packet of a new connection as a rule set sees it.
type Packet struct {
	Src   netip.Addr
	Dst   netip.AddrPort
	Proto model.Protocol
	// FromNode is true for packets the node itself originates (the output
	// hook); false for packets forwarded from a Pod or client (prerouting).
	FromNode bool
}

// Verdict is what the rules do to a packet.
type Verdict int

// The possible verdicts.
const (
	// Untouched: no proxyd rule claims the packet; it goes on unchanged.
	Untouched Verdict = iota
	// DNAT: the destination is rewritten to one endpoint.
	DNAT
	// Reject: the sender gets a TCP reset or ICMP unreachable at once.
	Reject
	// Drop: the packet is silently discarded.
	Drop
)

func (v Verdict) String() string {
	return [...]string{"untouched", "dnat", "reject", "drop"}[v]
}

// Result is one traced packet's fate.
type Result struct {
	Verdict    Verdict
	Endpoint   netip.AddrPort // the DNAT target, when Verdict == DNAT
	Masquerade bool           // the source is rewritten on the way out
	// Err is set when the tracer met a rule it does not understand (an
	// unknown match, option or target): the packet's fate is unknown and
	// the rest of Result means nothing. A case with an Err fails.
	Err error
}

// Tracer evaluates a backend's rendered rules for one packet. rnd returns a
// uniformly distributed value in [0, n) and stands for the kernel's random
// source (numgen, statistic, the IPVS scheduler), so distributions can be
// tested.
type Tracer interface {
	Trace(p Packet, rnd func(n uint32) uint32) Result
}

// Case is one expectation of the spec.
type Case struct {
	Name   string
	Packet Packet
	Want   Verdict
	// Endpoints are the allowed DNAT targets; every one must be reachable
	// and no other.
	Endpoints []netip.AddrPort
	// Masquerade is the expectation for every DNAT target except
	// HairpinEndpoint, which is always masqueraded.
	Masquerade      bool
	HairpinEndpoint netip.AddrPort
	// Sticky: every packet of the case must reach the same one of
	// Endpoints (session affinity), instead of all of them.
	Sticky bool
}

// Lab addresses the spec uses.
var (
	Pod1     = netip.MustParseAddr("10.244.1.11")
	Pod2     = netip.MustParseAddr("10.244.1.12")
	Pod3     = netip.MustParseAddr("10.244.1.13")
	Client   = netip.MustParseAddr("10.244.1.100")
	NodeIP   = netip.MustParseAddr("10.88.0.2")
	Pod1v6   = netip.MustParseAddr("fd00:10:244:1::11")
	Pod2v6   = netip.MustParseAddr("fd00:10:244:1::12")
	Clientv6 = netip.MustParseAddr("fd00:10:244:1::100")

	WebVIP      = netip.MustParseAddr("10.96.0.10")
	DNSVIP      = netip.MustParseAddr("10.96.0.20")
	EmptyVIP    = netip.MustParseAddr("10.96.0.30")
	NotReadyVIP = netip.MustParseAddr("10.96.0.40")
	TermVIP     = netip.MustParseAddr("10.96.0.50")
	SCTPVIP     = netip.MustParseAddr("10.96.0.60")
	LocalVIP    = netip.MustParseAddr("10.96.0.70")
	// LocalRemoteVIP's Service has internalTrafficPolicy Local and its only
	// endpoint on another node, and NodePort 30085.
	LocalRemoteVIP = netip.MustParseAddr("10.96.0.71")
	HeadlessLikeIP = netip.MustParseAddr("10.96.0.99")

	StickyVIP         = netip.MustParseAddr("10.96.0.90")
	NodePortVIP       = netip.MustParseAddr("10.96.0.80")
	NodePortLocalVIP  = netip.MustParseAddr("10.96.0.81")
	NodePortRemoteVIP = netip.MustParseAddr("10.96.0.82")
	NodePortEmptyVIP  = netip.MustParseAddr("10.96.0.83")
	WebVIPv6          = netip.MustParseAddr("fd00:10:96::10")

	ExternalClient = netip.MustParseAddr("192.0.2.1")
	ExternalIP     = netip.MustParseAddr("192.0.2.10")

	// RangedVIP's Service is a LoadBalancer at RangedLBIP that only
	// SourceRange may use; RangedEmptyVIP's is the same without endpoints.
	RangedVIP       = netip.MustParseAddr("10.96.0.84")
	RangedEmptyVIP  = netip.MustParseAddr("10.96.0.85")
	RangedLBIP      = netip.MustParseAddr("192.0.2.20")
	RangedEmptyLBIP = netip.MustParseAddr("192.0.2.21")
	SourceRange     = netip.MustParsePrefix("192.0.2.0/28")
	OutsideClient   = netip.MustParseAddr("198.51.100.7")

	ServiceCIDR   = netip.MustParsePrefix("10.96.0.0/16")
	ServiceCIDRv6 = netip.MustParsePrefix("fd00:10:96::/112")
)

// NodeLocal reports whether a is an address of the spec's node.
func NodeLocal(a netip.Addr) bool { return a == NodeIP || a.IsLoopback() }

// EchoPort is the port every lab Pod serves on, TCP and UDP.
const EchoPort = 8080

// NodeName is the node the spec's State is built for.
const NodeName = "node1"

// Config is the node configuration the spec assumes.
func Config() proxier.Config {
	return proxier.Config{
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
	}
}

func ep(ip netip.Addr, node string, ready, serving, terminating bool) model.SliceEndpoint {
	return model.SliceEndpoint{Addresses: []netip.Addr{ip}, Ready: ready, Serving: serving, Terminating: terminating, NodeName: node}
}

func ready(ip netip.Addr) model.SliceEndpoint { return ep(ip, "node2", true, true, false) }

func local(ip netip.Addr) model.SliceEndpoint { return ep(ip, NodeName, true, true, false) }

func svc(name string, vips []netip.Addr, proto model.Protocol, port uint16, mod func(*model.Service)) *model.Service {
	s := &model.Service{Namespace: "default", Name: name, ClusterIPs: vips,
		Ports: []model.ServicePortSpec{{Name: "p", Protocol: proto, Port: port}}}
	if mod != nil {
		mod(s)
	}
	return s
}

func slice(svcName, sliceName string, fam model.IPFamily, proto model.Protocol, eps ...model.SliceEndpoint) *model.EndpointSlice {
	return &model.EndpointSlice{Namespace: "default", Name: sliceName, ServiceName: svcName, Family: fam,
		Ports: []model.SlicePort{{Name: "p", Protocol: proto, Port: EchoPort}}, Endpoints: eps}
}

// Snapshot is the informer view the spec's State is built from.
func Snapshot() model.Snapshot {
	v4 := func(a netip.Addr) []netip.Addr { return []netip.Addr{a} }
	services := []*model.Service{
		svc("web", []netip.Addr{WebVIP, WebVIPv6}, model.TCP, 80, nil),
		svc("dns", v4(DNSVIP), model.UDP, 53, nil),
		svc("empty", v4(EmptyVIP), model.TCP, 80, nil),
		svc("notready", v4(NotReadyVIP), model.TCP, 80, nil),
		svc("term", v4(TermVIP), model.TCP, 80, nil),
		svc("sctp", v4(SCTPVIP), model.SCTP, 9999, nil),
		svc("local", v4(LocalVIP), model.TCP, 80, func(s *model.Service) { s.InternalLocal = true }),
		svc("localremote", v4(LocalRemoteVIP), model.TCP, 80, func(s *model.Service) { s.InternalLocal = true; s.Ports[0].NodePort = 30085 }),
		svc("sticky", v4(StickyVIP), model.TCP, 80, func(s *model.Service) { s.AffinitySeconds = 10800 }),
		svc("np", v4(NodePortVIP), model.TCP, 80, func(s *model.Service) { s.Ports[0].NodePort = 30080; s.ExternalIPs = []netip.Addr{ExternalIP} }),
		svc("nplocal", v4(NodePortLocalVIP), model.TCP, 80, func(s *model.Service) { s.Ports[0].NodePort = 30081; s.ExternalLocal = true }),
		svc("npremote", v4(NodePortRemoteVIP), model.TCP, 80, func(s *model.Service) { s.Ports[0].NodePort = 30082; s.ExternalLocal = true }),
		svc("npempty", v4(NodePortEmptyVIP), model.TCP, 80, func(s *model.Service) { s.Ports[0].NodePort = 30083 }),
		svc("ranged", v4(RangedVIP), model.TCP, 80, func(s *model.Service) {
			s.Ports[0].NodePort = 30084
			s.LoadBalancerIPs = []netip.Addr{RangedLBIP}
			s.LoadBalancerSourceRanges = []netip.Prefix{SourceRange}
		}),
		svc("rangedempty", v4(RangedEmptyVIP), model.TCP, 80, func(s *model.Service) {
			s.LoadBalancerIPs = []netip.Addr{RangedEmptyLBIP}
			s.LoadBalancerSourceRanges = []netip.Prefix{SourceRange}
		}),
	}
	slices := []*model.EndpointSlice{
		// Pod1 runs on this node (the hairpin case sends from it); Pod2 and
		// Pod3 on another.
		slice("web", "web-a", model.IPv4, model.TCP, local(Pod1), ready(Pod2)),
		slice("web", "web-b", model.IPv4, model.TCP, ready(Pod3), local(Pod1)), // Pod1 again: deduplicated
		slice("web", "web-v6", model.IPv6, model.TCP, ready(Pod1v6), ready(Pod2v6)),
		slice("dns", "dns-a", model.IPv4, model.UDP, ready(Pod1), ready(Pod2)),
		slice("notready", "notready-a", model.IPv4, model.TCP, ep(Pod3, "node2", false, false, false)),
		slice("term", "term-a", model.IPv4, model.TCP, ep(Pod2, "node2", false, true, true), ep(Pod3, "node2", false, false, true)),
		slice("sctp", "sctp-a", model.IPv4, model.SCTP, ready(Pod1)),
		slice("local", "local-a", model.IPv4, model.TCP, ep(Pod1, NodeName, true, true, false), ready(Pod2)),
		slice("localremote", "localremote-a", model.IPv4, model.TCP, ready(Pod2)),
		slice("sticky", "sticky-a", model.IPv4, model.TCP, ready(Pod1), ready(Pod2), ready(Pod3)),
		slice("np", "np-a", model.IPv4, model.TCP, ready(Pod1), ready(Pod2)),
		slice("nplocal", "nplocal-a", model.IPv4, model.TCP, ep(Pod1, NodeName, true, true, false), ready(Pod2)),
		slice("npremote", "npremote-a", model.IPv4, model.TCP, ready(Pod2), ready(Pod3)),
		slice("ranged", "ranged-a", model.IPv4, model.TCP, ready(Pod1), ready(Pod2)),
	}
	snap := model.Snapshot{
		Node:         model.Node{Name: NodeName, IPs: []netip.Addr{NodeIP}, Ready: true},
		ServiceCIDRs: []netip.Prefix{ServiceCIDR, ServiceCIDRv6},
		Services:     map[model.NamespacedName]*model.Service{},
		Slices:       map[model.NamespacedName]*model.EndpointSlice{},
	}
	for _, s := range services {
		snap.Services[model.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	for _, s := range slices {
		snap.Slices[model.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	return snap
}

// State is the spec's State.
func State() *model.State { return model.Build(Snapshot()) }

func at(ips ...netip.Addr) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip, EchoPort))
	}
	return out
}

// Cases are the spec's expectations for State() under Config().
func Cases() []Case {
	vip := netip.AddrPortFrom
	return []Case{
		{Name: "TCP from a client to a ClusterIP reaches any of its three Pods", Packet: Packet{Src: Client, Dst: vip(WebVIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2, Pod3)},
		{Name: "TCP from the node itself to a ClusterIP reaches any of its three Pods, masqueraded as it comes from outside the cluster CIDR", Packet: Packet{Src: NodeIP, Dst: vip(WebVIP, 80), Proto: model.TCP, FromNode: true}, Want: DNAT, Endpoints: at(Pod1, Pod2, Pod3), Masquerade: true},
		{Name: "a Pod reaching itself through its VIP is masqueraded (hairpin)", Packet: Packet{Src: Pod1, Dst: vip(WebVIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2, Pod3), HairpinEndpoint: netip.AddrPortFrom(Pod1, EchoPort)},
		{Name: "UDP to a ClusterIP reaches its two Pods", Packet: Packet{Src: Client, Dst: vip(DNSVIP, 53), Proto: model.UDP}, Want: DNAT, Endpoints: at(Pod1, Pod2)},
		{Name: "UDP to the TCP-only web VIP is refused, as a port the Service does not have", Packet: Packet{Src: Client, Dst: vip(WebVIP, 80), Proto: model.UDP}, Want: Reject},
		{Name: "a port the Service does not have is refused", Packet: Packet{Src: Client, Dst: vip(WebVIP, 81), Proto: model.TCP}, Want: Reject},
		{Name: "a port the Service does not have is refused from the node too", Packet: Packet{Src: NodeIP, Dst: vip(WebVIP, 81), Proto: model.TCP, FromNode: true}, Want: Reject},
		{Name: "a Service without endpoints rejects", Packet: Packet{Src: Client, Dst: vip(EmptyVIP, 80), Proto: model.TCP}, Want: Reject},
		{Name: "a Service without endpoints rejects node-originated traffic too", Packet: Packet{Src: NodeIP, Dst: vip(EmptyVIP, 80), Proto: model.TCP, FromNode: true}, Want: Reject},
		{Name: "a Service whose only endpoint is not ready rejects", Packet: Packet{Src: Client, Dst: vip(NotReadyVIP, 80), Proto: model.TCP}, Want: Reject},
		{Name: "with no ready endpoint, serving terminating endpoints take traffic", Packet: Packet{Src: Client, Dst: vip(TermVIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod2)},
		{Name: "SCTP to a ClusterIP reaches its Pod", Packet: Packet{Src: Client, Dst: vip(SCTPVIP, 9999), Proto: model.SCTP}, Want: DNAT, Endpoints: at(Pod1)},
		{Name: "internalTrafficPolicy Local uses only this node's endpoint", Packet: Packet{Src: Client, Dst: vip(LocalVIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1)},
		{Name: "internalTrafficPolicy Local without a local endpoint drops, as other nodes still serve", Packet: Packet{Src: Client, Dst: vip(LocalRemoteVIP, 80), Proto: model.TCP}, Want: Drop},
		{Name: "internalTrafficPolicy Local without a local endpoint drops the node's traffic too", Packet: Packet{Src: NodeIP, Dst: vip(LocalRemoteVIP, 80), Proto: model.TCP, FromNode: true}, Want: Drop},
		{Name: "an unallocated address in the service range is refused", Packet: Packet{Src: Client, Dst: vip(HeadlessLikeIP, 80), Proto: model.TCP}, Want: Reject},
		{Name: "an unallocated address in the service range is refused from the node too", Packet: Packet{Src: NodeIP, Dst: vip(HeadlessLikeIP, 80), Proto: model.TCP, FromNode: true}, Want: Reject},
		{Name: "a Pod address (what a headless Service's name resolves to) is untouched", Packet: Packet{Src: Client, Dst: vip(Pod1, EchoPort), Proto: model.TCP}, Want: Untouched},
		{Name: "a Pod address is untouched from the node too", Packet: Packet{Src: NodeIP, Dst: vip(Pod1, EchoPort), Proto: model.TCP, FromNode: true}, Want: Untouched},
		{Name: "IPv6 to the dual-stack ClusterIP reaches the IPv6 endpoints", Packet: Packet{Src: Clientv6, Dst: vip(WebVIPv6, 80), Proto: model.TCP}, Want: DNAT, Endpoints: []netip.AddrPort{netip.AddrPortFrom(Pod1v6, EchoPort), netip.AddrPortFrom(Pod2v6, EchoPort)}},
	}
}

// ExternalCases are the spec's expectations for traffic from outside the
// cluster: NodePorts, external IPs and externalTrafficPolicy. Backends
// that program external traffic run them with RunExternal.
func ExternalCases() []Case {
	at1 := netip.AddrPortFrom
	node := func(port uint16) netip.AddrPort { return at1(NodeIP, port) }
	return []Case{
		{Name: "a NodePort from outside reaches the Service's Pods, masqueraded", Packet: Packet{Src: ExternalClient, Dst: node(30080), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2), Masquerade: true},
		{Name: "a NodePort from the node itself reaches the Service's Pods", Packet: Packet{Src: NodeIP, Dst: node(30080), Proto: model.TCP, FromNode: true}, Want: DNAT, Endpoints: at(Pod1, Pod2), Masquerade: true},
		{Name: "an external IP reaches the Service's Pods, masqueraded", Packet: Packet{Src: ExternalClient, Dst: at1(ExternalIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2), Masquerade: true},
		{Name: "externalTrafficPolicy Local keeps the client's address and uses only this node's endpoint", Packet: Packet{Src: ExternalClient, Dst: node(30081), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1)},
		{Name: "externalTrafficPolicy Local without a local endpoint drops external traffic", Packet: Packet{Src: ExternalClient, Dst: node(30082), Proto: model.TCP}, Want: Drop},
		{Name: "externalTrafficPolicy Local still serves Pods from the whole Service", Packet: Packet{Src: Pod1, Dst: node(30082), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod2, Pod3)},
		{Name: "externalTrafficPolicy Local still serves the node from the whole Service, masqueraded", Packet: Packet{Src: NodeIP, Dst: node(30082), Proto: model.TCP, FromNode: true}, Want: DNAT, Endpoints: at(Pod2, Pod3), Masquerade: true},
		{Name: "a NodePort without endpoints refuses", Packet: Packet{Src: ExternalClient, Dst: node(30083), Proto: model.TCP}, Want: Reject},
		{Name: "a NodePort without endpoints refuses the node too", Packet: Packet{Src: NodeIP, Dst: node(30083), Proto: model.TCP, FromNode: true}, Want: Reject},
		{Name: "a node port no Service has is left alone", Packet: Packet{Src: ExternalClient, Dst: node(30099), Proto: model.TCP}, Want: Untouched},
		{Name: "internalTrafficPolicy Local does not narrow the Service's NodePort", Packet: Packet{Src: ExternalClient, Dst: node(30085), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod2), Masquerade: true},
		{Name: "a NodePort's ClusterIP still works as a ClusterIP", Packet: Packet{Src: Client, Dst: at1(NodePortVIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2)},
		{Name: "a load-balancer IP admits a source inside loadBalancerSourceRanges", Packet: Packet{Src: ExternalClient, Dst: at1(RangedLBIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2), Masquerade: true},
		{Name: "a load-balancer IP drops a source outside loadBalancerSourceRanges", Packet: Packet{Src: OutsideClient, Dst: at1(RangedLBIP, 80), Proto: model.TCP}, Want: Drop},
		{Name: "a load-balancer IP drops a Pod outside loadBalancerSourceRanges", Packet: Packet{Src: Client, Dst: at1(RangedLBIP, 80), Proto: model.TCP}, Want: Drop},
		{Name: "a load-balancer IP drops the node outside loadBalancerSourceRanges", Packet: Packet{Src: NodeIP, Dst: at1(RangedLBIP, 80), Proto: model.TCP, FromNode: true}, Want: Drop},
		{Name: "loadBalancerSourceRanges do not guard the Service's NodePort", Packet: Packet{Src: OutsideClient, Dst: node(30084), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2), Masquerade: true},
		{Name: "loadBalancerSourceRanges do not guard the Service's ClusterIP", Packet: Packet{Src: Client, Dst: at1(RangedVIP, 80), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2)},
		{Name: "a guarded load-balancer IP without endpoints refuses a source inside the ranges", Packet: Packet{Src: ExternalClient, Dst: at1(RangedEmptyLBIP, 80), Proto: model.TCP}, Want: Reject},
		{Name: "a guarded load-balancer IP without endpoints drops a source outside the ranges", Packet: Packet{Src: OutsideClient, Dst: at1(RangedEmptyLBIP, 80), Proto: model.TCP}, Want: Drop},
	}
}

// AffinityCases are the spec's expectations for sessionAffinity ClientIP.
// Backends that program affinity run them with RunAffinity; their tracer
// must remember clients across packets as the kernel does.
func AffinityCases() []Case {
	vip := netip.AddrPortFrom(StickyVIP, 80)
	return []Case{
		{Name: "with ClientIP affinity every connection of a client reaches one Pod", Packet: Packet{Src: Client, Dst: vip, Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod1, Pod2, Pod3), Sticky: true},
		{Name: "with ClientIP affinity the node's connections stick too", Packet: Packet{Src: NodeIP, Dst: vip, Proto: model.TCP, FromNode: true}, Want: DNAT, Endpoints: at(Pod1, Pod2, Pod3), Masquerade: true, Sticky: true},
	}
}
