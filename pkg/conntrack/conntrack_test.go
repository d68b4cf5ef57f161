package conntrack

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/pkg/model"
)

var (
	dnsUDP = model.ServicePortKey{Namespace: "kube-system", Name: "dns", Port: "dns", Protocol: model.UDP}
	dnsTCP = model.ServicePortKey{Namespace: "kube-system", Name: "dns", Port: "dns-tcp", Protocol: model.TCP}
)

func dnsState(eps ...model.Endpoint) *model.State {
	port := func(k model.ServicePortKey) *model.ServicePort {
		return &model.ServicePort{Key: k, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 53,
			NodePort: 30053, ExternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}, Endpoints: eps}
	}
	return &model.State{Services: map[model.ServicePortKey]*model.ServicePort{dnsUDP: port(dnsUDP), dnsTCP: port(dnsTCP)}}
}

func ep(ip string, ready, serving bool) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: 5353, Ready: ready, Serving: serving}
}

// flow is a conntrack entry as the kernel reports it: the original tuple
// from the client to dst, the reply tuple from whoever answers (the
// endpoint after DNAT, dst itself when nothing translated it).
func flow(proto uint8, dst, reply string, tcpState uint8) *netlink.ConntrackFlow {
	d, r := netip.MustParseAddrPort(dst), netip.MustParseAddrPort(reply)
	f := &netlink.ConntrackFlow{
		Forward: netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP("10.244.1.100"), SrcPort: 40000,
			DstIP: net.IP(d.Addr().AsSlice()), DstPort: d.Port()},
		Reverse: netlink.IPTuple{Protocol: proto, SrcIP: net.IP(r.Addr().AsSlice()), SrcPort: r.Port(),
			DstIP: net.ParseIP("10.244.1.100"), DstPort: 40000},
	}
	if proto == unix.IPPROTO_TCP {
		f.ProtoInfo = &netlink.ProtoInfoTCP{State: tcpState}
	}
	return f
}

const established = 3

func TestPlanForAChangedPortKeepsOnlyFlowsAnsweredByServingEndpoints(t *testing.T) {
	s := dnsState(ep("10.0.0.1", true, true), ep("10.0.0.2", false, true), ep("10.0.0.3", false, false))
	p := NewPlan(model.Diff{Updated: []model.ServicePortKey{dnsTCP, dnsUDP}, Unsettled: []model.ServicePortKey{dnsTCP, dnsUDP}}, s)
	udp, tcp := uint8(unix.IPPROTO_UDP), uint8(unix.IPPROTO_TCP)
	for _, tc := range []struct {
		name string
		flow *netlink.ConntrackFlow
		want bool
	}{
		{"UDP to the ClusterIP, answered by a ready endpoint", flow(udp, "10.96.0.10:53", "10.0.0.1:5353", 0), false},
		{"UDP to a terminating endpoint that still serves", flow(udp, "10.96.0.10:53", "10.0.0.2:5353", 0), false},
		{"UDP to an endpoint that no longer serves", flow(udp, "10.96.0.10:53", "10.0.0.3:5353", 0), true},
		{"UDP to an endpoint that is gone", flow(udp, "10.96.0.10:53", "10.0.0.9:5353", 0), true},
		{"UDP created while the VIP rejected (never DNATed)", flow(udp, "10.96.0.10:53", "10.96.0.10:53", 0), true},
		{"UDP to the external IP, never DNATed", flow(udp, "192.0.2.10:53", "192.0.2.10:53", 0), true},
		{"UDP to the NodePort on a node address, to a gone endpoint", flow(udp, "10.88.0.2:30053", "10.0.0.9:5353", 0), true},
		{"UDP to the NodePort, answered by a ready endpoint", flow(udp, "10.88.0.2:30053", "10.0.0.1:5353", 0), false},
		{"UDP to another port of the VIP", flow(udp, "10.96.0.10:54", "10.96.0.10:54", 0), false},
		{"UDP to another address", flow(udp, "10.96.0.11:53", "10.96.0.11:53", 0), false},
		{"an unanswered TCP SYN that was never DNATed", flow(tcp, "10.96.0.10:53", "10.96.0.10:53", tcpSynSent), true},
		{"an unanswered TCP SYN to a gone endpoint", flow(tcp, "10.96.0.10:53", "10.0.0.9:5353", tcpSynSent), true},
		{"a TCP SYN on its way to a ready endpoint", flow(tcp, "10.96.0.10:53", "10.0.0.1:5353", tcpSynSent), false},
		{"an established TCP connection to a gone endpoint", flow(tcp, "10.96.0.10:53", "10.0.0.9:5353", established), false},
	} {
		if got := p.Stale(tc.flow); got != tc.want {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPlanLooksOnlyAtChangedPortsAndRetiredDestinations(t *testing.T) {
	s := dnsState(ep("10.0.0.1", true, true))
	udp := uint8(unix.IPPROTO_UDP)
	if p := NewPlan(model.Diff{}, s); !p.Empty() || p.Stale(flow(udp, "10.96.0.10:53", "10.96.0.10:53", 0)) {
		t.Error("a sync that changed nothing plans deletions")
	}
	if p := NewPlan(model.Diff{Updated: []model.ServicePortKey{dnsUDP}}, s); !p.Empty() {
		t.Error("an update that left every flow somewhere serving plans deletions")
	}
	retired := model.Diff{Removed: []model.ServicePortKey{{Name: "old", Protocol: model.UDP}},
		Retired: []model.Destination{{Protocol: model.UDP, Addr: netip.MustParseAddrPort("10.96.0.20:53")}}}
	p := NewPlan(retired, s)
	if !p.Stale(flow(udp, "10.96.0.20:53", "10.0.0.1:5353", 0)) {
		t.Error("a flow to a removed Service's VIP is kept")
	}
	if p.Stale(flow(udp, "10.96.0.10:53", "10.96.0.10:53", 0)) {
		t.Error("a flow to an unchanged port is deleted")
	}
	taken := model.Diff{Updated: []model.ServicePortKey{dnsUDP}, Unsettled: []model.ServicePortKey{dnsUDP},
		Retired: []model.Destination{{Protocol: model.UDP, Addr: netip.MustParseAddrPort("10.96.0.10:53")}}}
	if NewPlan(taken, s).Stale(flow(udp, "10.96.0.10:53", "10.0.0.1:5353", 0)) {
		t.Error("a destination retired by one port and served by another loses its live flows")
	}
}

func TestPlanWalksOnlyTheFamiliesItNames(t *testing.T) {
	p := NewPlan(model.Diff{Added: []model.ServicePortKey{dnsUDP}, Unsettled: []model.ServicePortKey{dnsUDP}}, dnsState())
	if !p.families[model.IPv4] || p.families[model.IPv6] {
		t.Errorf("families = %v, want IPv4 only", p.families)
	}
}
