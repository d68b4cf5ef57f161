package flowspec

import (
	"net/netip"

	"github.com/proxyd/proxyd/pkg/model"
)

// Addresses of the traffic-policy spec: two Services with both traffic
// policies Local, one served only by another node, one by nobody.
var (
	BothLocalVIP     = netip.MustParseAddr("10.96.0.86")
	BothLocalNoneVIP = netip.MustParseAddr("10.96.0.87")
)

// The traffic-policy spec's NodePorts.
const (
	BothLocalNodePort     = 30086
	BothLocalNoneNodePort = 30087
)

// PolicySnapshot is the informer view of the traffic-policy spec: the
// decisions pkg/model makes once for every mode (ExternalDrops,
// ExternalRefuses, ShortCircuits) where the two policies meet.
func PolicySnapshot() model.Snapshot {
	both := func(s *model.Service) { s.InternalLocal, s.ExternalLocal = true, true }
	snap := model.Snapshot{
		Node:         model.Node{Name: NodeName, IPs: []netip.Addr{NodeIP}, Ready: true},
		ServiceCIDRs: []netip.Prefix{ServiceCIDR, ServiceCIDRv6},
		Services:     map[model.NamespacedName]*model.Service{},
		Slices:       map[model.NamespacedName]*model.EndpointSlice{},
	}
	for _, s := range []*model.Service{
		svc("bothlocal", []netip.Addr{BothLocalVIP}, model.TCP, 80, func(s *model.Service) { both(s); s.Ports[0].NodePort = BothLocalNodePort }),
		svc("bothlocalnone", []netip.Addr{BothLocalNoneVIP}, model.TCP, 80, func(s *model.Service) { both(s); s.Ports[0].NodePort = BothLocalNoneNodePort }),
	} {
		snap.Services[model.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	for _, s := range []*model.EndpointSlice{
		slice("bothlocal", "bothlocal-a", model.IPv4, model.TCP, ready(Pod2), ready(Pod3)),
		slice("bothlocalnone", "bothlocalnone-a", model.IPv4, model.TCP, ep(Pod3, "node2", false, false, false)),
	} {
		snap.Slices[model.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}
	return snap
}

// PolicyState is the traffic-policy spec's State.
func PolicyState() *model.State { return model.Build(PolicySnapshot()) }

// PolicyCases are the traffic-policy spec's expectations for PolicyState()
// under Config(), as kube-proxy behaves: with both policies Local and no
// endpoint on this node, outside clients are dropped while the node's Pods
// and the node itself are short-circuited to the other nodes' endpoints;
// with no endpoint anywhere, everyone is refused.
func PolicyCases() []Case {
	node := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(NodeIP, port) }
	vip := netip.AddrPortFrom
	return []Case{
		{Name: "both policies Local, only other nodes serve: the NodePort drops an outside client", Packet: Packet{Src: ExternalClient, Dst: node(BothLocalNodePort), Proto: model.TCP}, Want: Drop},
		{Name: "both policies Local, only other nodes serve: a Pod reaching the NodePort is short-circuited to them", Packet: Packet{Src: Client, Dst: node(BothLocalNodePort), Proto: model.TCP}, Want: DNAT, Endpoints: at(Pod2, Pod3)},
		{Name: "both policies Local, only other nodes serve: the node reaching its NodePort is short-circuited, masqueraded", Packet: Packet{Src: NodeIP, Dst: node(BothLocalNodePort), Proto: model.TCP, FromNode: true}, Want: DNAT, Endpoints: at(Pod2, Pod3), Masquerade: true},
		{Name: "both policies Local, only other nodes serve: the ClusterIP drops", Packet: Packet{Src: Client, Dst: vip(BothLocalVIP, 80), Proto: model.TCP}, Want: Drop},
		{Name: "both policies Local, nobody serves: the NodePort refuses an outside client", Packet: Packet{Src: ExternalClient, Dst: node(BothLocalNoneNodePort), Proto: model.TCP}, Want: Reject},
		{Name: "both policies Local, nobody serves: the NodePort refuses a Pod", Packet: Packet{Src: Client, Dst: node(BothLocalNoneNodePort), Proto: model.TCP}, Want: Reject},
		{Name: "both policies Local, nobody serves: the ClusterIP refuses", Packet: Packet{Src: Client, Dst: vip(BothLocalNoneVIP, 80), Proto: model.TCP}, Want: Reject},
	}
}
