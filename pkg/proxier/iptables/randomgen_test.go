package iptables

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// snapGen makes random changes to an informer view, one object at a
// time, replacing objects instead of changing them (informer objects are
// immutable, which the Builder's memo relies on).
type snapGen struct {
	rng  *rand.Rand
	snap model.Snapshot
}

// genServices is how many Services the generator manages.
const genServices = 10

// The pools the generator draws from. Addresses of a pool are shared by
// Services on purpose: two ports on one external IP, two ClusterIPs
// outside the ServiceCIDRs, the same endpoint in two Services.
var (
	genExternalIPs = addrs("192.0.2.10", "192.0.2.11", "2001:db8::10")
	genLBIPs       = addrs("192.0.2.20", "2001:db8::20")
	genRanges      = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28"), netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("10.88.0.0/24"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("2001:db8::/64")}
	genNodeIPs = [][]netip.Addr{addrs("10.88.0.2"), addrs("10.88.0.3"), addrs("10.88.0.2", "fd00:88::2")}
	genCIDRs   = [][]netip.Prefix{nil, {flowspec.ServiceCIDR}, {flowspec.ServiceCIDR, flowspec.ServiceCIDRv6}}
	genZones   = []string{"", "zone-a", "zone-b"}
	genNodes   = []string{flowspec.NodeName, "node2", "node3"}
)

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func newSnapGen(rng *rand.Rand) *snapGen {
	g := &snapGen{rng: rng, snap: model.Snapshot{
		Node:         model.Node{Name: flowspec.NodeName, Zone: genZones[1], IPs: genNodeIPs[0], Ready: true},
		ServiceCIDRs: genCIDRs[2],
		Services:     map[model.NamespacedName]*model.Service{},
		Slices:       map[model.NamespacedName]*model.EndpointSlice{},
	}}
	for i := range genServices {
		g.snap.Services[svcName(i)] = g.newService(i)
		for _, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
			es := g.newSlice(i, fam)
			g.snap.Slices[model.NamespacedName{Namespace: es.Namespace, Name: es.Name}] = es
		}
	}
	return g
}

func svcName(i int) model.NamespacedName {
	return model.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("svc%d", i)}
}

func (g *snapGen) pick(n int) int { return g.rng.IntN(n) }

func (g *snapGen) coin() bool { return g.rng.IntN(2) == 0 }

// subset returns a random subset of pool, in pool order.
func subset[T any](g *snapGen, pool []T) []T {
	var out []T
	for _, x := range pool {
		if g.coin() {
			out = append(out, x)
		}
	}
	return out
}

// hintsWith returns a copy of h (which ports share) with its zones, or
// its nodes, replaced by to.
func hintsWith(h *model.Hints, zones bool, to []string) *model.Hints {
	var out model.Hints
	if h != nil {
		out = *h
	}
	if zones {
		out.Zones = to
	} else {
		out.Nodes = to
	}
	return &out
}

func (g *snapGen) clusterIPs(i int) []netip.Addr {
	v4 := netip.AddrFrom4([4]byte{10, 96, 0, byte(10 + i)})
	v6 := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 0x96, 15: byte(10 + i)})
	outside := netip.AddrFrom4([4]byte{10, 99, 0, byte(i % 3)})
	return [][]netip.Addr{{v4}, {v6}, {v4, v6}, {v6, v4}, {outside}, {outside, v6}}[g.pick(6)]
}

// lbIPs are Service i's pool of load-balancer addresses: the shared ones
// and one of its own. Two Services on one address and port conflict, and
// the model leaves the younger one's address out; the address of its own
// keeps every Service's load-balancer IPs reaching the rules.
func lbIPs(i int) []netip.Addr {
	return append(slices.Clone(genLBIPs), netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)}))
}

func (g *snapGen) newService(i int) *model.Service {
	s := &model.Service{Namespace: "ns", Name: fmt.Sprintf("svc%d", i), ClusterIPs: g.clusterIPs(i),
		Ports: []model.ServicePortSpec{{Name: "p", Protocol: model.TCP, Port: 80}}}
	if g.coin() {
		s.Ports[0].NodePort = uint16(30000 + i)
	}
	return s
}

// endpointIP is endpoint j of the family's pool; Services share it.
func endpointIP(j int, fam model.IPFamily) netip.Addr {
	if fam == model.IPv6 {
		return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 15: byte(j + 1)})
	}
	return netip.AddrFrom4([4]byte{10, 244, 1, byte(j + 1)})
}

func (g *snapGen) newEndpoint(fam model.IPFamily) model.SliceEndpoint {
	ready := g.coin()
	return model.SliceEndpoint{Addresses: []netip.Addr{endpointIP(g.pick(6), fam)}, Ready: ready, Serving: ready || g.coin(),
		Terminating: g.coin(), NodeName: genNodes[g.pick(len(genNodes))]}
}

func (g *snapGen) newSlice(i int, fam model.IPFamily) *model.EndpointSlice {
	es := &model.EndpointSlice{Namespace: "ns", Name: fmt.Sprintf("svc%d-%v", i, fam), ServiceName: fmt.Sprintf("svc%d", i), Family: fam,
		Ports: []model.SlicePort{{Name: "p", Protocol: model.TCP, Port: 8080}}}
	for range g.pick(4) {
		es.Endpoints = append(es.Endpoints, g.newEndpoint(fam))
	}
	return es
}

// mutate makes one random change and says what it was.
func (g *snapGen) mutate() string {
	switch n := g.pick(20); {
	case n < 9:
		return g.mutateService()
	case n < 17:
		return g.mutateSlice()
	case n < 19:
		return g.mutateNode()
	default:
		g.snap.ServiceCIDRs = genCIDRs[g.pick(len(genCIDRs))]
		return fmt.Sprintf("ServiceCIDRs %v", g.snap.ServiceCIDRs)
	}
}

func (g *snapGen) mutateNode() string {
	n := g.snap.Node
	n.IPs = slices.Clone(n.IPs)
	var what string
	switch g.pick(5) {
	case 0:
		n.IPs, what = genNodeIPs[g.pick(len(genNodeIPs))], "IPs"
	case 1:
		n.Zone, what = genZones[g.pick(len(genZones))], "zone"
	case 2:
		n.Ready, what = !n.Ready, "ready"
	case 3:
		n.Retiring, what = !n.Retiring, "retiring"
	default:
		// Renaming the node is what a test can do that a node cannot;
		// it moves "local" to other endpoints.
		n.Name, what = genNodes[g.pick(2)], "name"
	}
	g.snap.Node = n
	return "node " + what
}

func (g *snapGen) mutateService() string {
	i := g.pick(genServices)
	name := svcName(i)
	g.snap.Services = maps.Clone(g.snap.Services)
	old := g.snap.Services[name]
	if old == nil {
		g.snap.Services[name] = g.newService(i)
		return name.String() + " created"
	}
	if g.pick(15) == 0 {
		delete(g.snap.Services, name)
		return name.String() + " deleted"
	}
	s := *old
	s.Ports = slices.Clone(old.Ports)
	var what string
	switch g.pick(14) {
	case 0:
		s.ClusterIPs, what = g.clusterIPs(i), "ClusterIPs"
	case 1:
		s.Ports[0].Port, what = []uint16{80, 81}[g.pick(2)], "port"
	case 2:
		s.Ports[0].NodePort, what = []uint16{0, uint16(30000 + i), uint16(31000 + i)}[g.pick(3)], "NodePort"
	case 3:
		s.InternalLocal, what = !s.InternalLocal, "internalTrafficPolicy"
	case 4:
		s.ExternalLocal, what = !s.ExternalLocal, "externalTrafficPolicy"
	case 5:
		s.AffinitySeconds, what = []int32{0, 60, 10800}[g.pick(3)], "affinity"
	case 6:
		s.TrafficDistribution, what = []string{"", model.TrafficDistributionPreferClose, model.TrafficDistributionPreferSameNode}[g.pick(3)], "trafficDistribution"
	case 7:
		s.ExternalIPs, what = subset(g, genExternalIPs), "externalIPs"
	case 8:
		s.LoadBalancerIPs, what = subset(g, lbIPs(i)), "load-balancer IPs"
	case 9:
		s.LoadBalancerSourceRanges, what = subset(g, genRanges), "loadBalancerSourceRanges"
	case 10:
		s.HealthCheckNodePort, what = []uint16{0, uint16(32000 + i)}[g.pick(2)], "healthCheckNodePort"
	case 12:
		// Load-balancer addresses that are external IPs too: only the
		// model's LoadBalancerIPs change, not its ExternalIPs.
		s.ExternalIPs, s.LoadBalancerIPs, what = lbIPs(i), subset(g, lbIPs(i)), "load-balancer IPs among the external IPs"
	case 11:
		s.Ports[0].Protocol, what = []model.Protocol{model.TCP, model.UDP, model.SCTP}[g.pick(3)], "protocol"
		g.setSlicePort(i, func(p *model.SlicePort) { p.Protocol = s.Ports[0].Protocol })
	default:
		// A second port (or none again): a Service of two service ports.
		if len(s.Ports) == 1 {
			s.Ports = append(s.Ports, model.ServicePortSpec{Name: "q", Protocol: model.UDP, Port: 53, NodePort: uint16(31500 + i)})
			what = "second port added"
		} else {
			s.Ports, what = s.Ports[:1], "second port removed"
		}
	}
	g.snap.Services[name] = &s
	return name.String() + " " + what
}

// setSlicePort changes the first port of both of Service i's slices.
func (g *snapGen) setSlicePort(i int, mod func(*model.SlicePort)) {
	for _, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
		n := model.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("svc%d-%v", i, fam)}
		old := g.snap.Slices[n]
		if old == nil {
			continue
		}
		es := *old
		es.Ports = slices.Clone(old.Ports)
		mod(&es.Ports[0])
		g.snap.Slices[n] = &es
	}
}

func (g *snapGen) mutateSlice() string {
	i := g.pick(genServices)
	fam := []model.IPFamily{model.IPv4, model.IPv6}[g.pick(2)]
	n := model.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("svc%d-%v", i, fam)}
	g.snap.Slices = maps.Clone(g.snap.Slices)
	old := g.snap.Slices[n]
	if old == nil {
		g.snap.Slices[n] = g.newSlice(i, fam)
		return n.String() + " created"
	}
	es := *old
	es.Endpoints = slices.Clone(old.Endpoints)
	es.Ports = slices.Clone(old.Ports)
	what := ""
	if len(es.Endpoints) == 0 || g.pick(5) == 0 {
		es.Endpoints, what = append(es.Endpoints, g.newEndpoint(fam)), "endpoint added"
	} else {
		j := g.pick(len(es.Endpoints))
		e := &es.Endpoints[j]
		switch n := g.pick(13); n {
		case 0:
			es.Endpoints, what = slices.Delete(es.Endpoints, j, j+1), "endpoint removed"
		case 1:
			e.Ready, what = !e.Ready, "ready"
		case 2:
			e.Serving, what = !e.Serving, "serving"
		case 3:
			e.Terminating, what = !e.Terminating, "terminating"
		case 4:
			e.NodeName, what = genNodes[g.pick(len(genNodes))], "node"
		case 5:
			e.Zone, what = genZones[g.pick(len(genZones))], "zone"
		case 6:
			e.Hints, what = hintsWith(e.Hints, true, subset(g, genZones[1:])), "zone hints"
		case 7:
			e.Hints, what = hintsWith(e.Hints, false, subset(g, genNodes)), "node hints"
		case 8:
			es.Ports[0].Port, what = []uint16{8080, 8081}[g.pick(2)], "target port"
		case 10, 11:
			// Hints count only when every ready endpoint has them:
			// hint them all at once, for zones or for nodes.
			for k := range es.Endpoints {
				if n == 10 {
					es.Endpoints[k].Hints = hintsWith(es.Endpoints[k].Hints, true, subset(g, genZones[1:]))
				} else {
					es.Endpoints[k].Hints = hintsWith(es.Endpoints[k].Hints, false, subset(g, genNodes))
				}
			}
			what = "every endpoint hinted"
		case 12:
			// A rollout: nothing ready, some endpoints serving while
			// they terminate.
			for k := range es.Endpoints {
				es.Endpoints[k].Ready, es.Endpoints[k].Terminating, es.Endpoints[k].Serving = false, true, g.coin()
			}
			what = "every endpoint terminating"
		default:
			e.Addresses, what = []netip.Addr{endpointIP(g.pick(6), fam)}, "address"
		}
	}
	g.snap.Slices[n] = &es
	return n.String() + " " + what
}
