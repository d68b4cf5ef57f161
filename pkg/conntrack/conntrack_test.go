package conntrack

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/proxyd/proxyd/pkg/model"
)

func TestFiltersCoverRemovedEndpointsAndNewlyServedVIPs(t *testing.T) {
	ep := func(ip string) model.Endpoint { return model.Endpoint{IP: netip.MustParseAddr(ip), Port: 53} }
	vip := []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53")}
	udp := model.ServicePortKey{Namespace: "kube-system", Name: "dns", Port: "dns", Protocol: model.UDP}
	tcp := model.ServicePortKey{Namespace: "kube-system", Name: "dns", Port: "dns-tcp", Protocol: model.TCP}
	st := &model.State{Services: map[model.ServicePortKey]*model.ServicePort{
		udp: {Key: udp, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Port: 53},
	}}
	d := model.Diff{
		StaleEndpoints: []model.StaleEndpoint{{Key: udp, VIPs: vip, Endpoint: ep("10.0.0.1")}, {Key: tcp, VIPs: vip, Endpoint: ep("10.0.0.1")}},
		NewlyServed:    []model.ServicePortKey{udp},
	}
	got := Filters(d, st)
	want := []Filter{
		{Proto: model.UDP, VIP: vip[0], Endpoint: netip.MustParseAddr("10.0.0.1")},
		{Proto: model.TCP, VIP: vip[0], Endpoint: netip.MustParseAddr("10.0.0.1")},
		{Proto: model.UDP, VIP: vip[0]},
	}
	if !slices.Equal(got, want) {
		t.Errorf("filters = %+v, want %+v", got, want)
	}
}

func TestMatchDeletesOnlyUnansweredTCPToTheRemovedEndpoint(t *testing.T) {
	f := Filter{Proto: model.TCP, VIP: netip.MustParseAddrPort("10.96.0.10:80"), Endpoint: netip.MustParseAddr("10.0.0.1")}
	flow := func(state uint8, ep string) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{
			Forward:   netlink.IPTuple{Protocol: 6, SrcIP: net.ParseIP("10.0.0.9"), DstIP: net.ParseIP("10.96.0.10"), DstPort: 80},
			Reverse:   netlink.IPTuple{Protocol: 6, SrcIP: net.ParseIP(ep), SrcPort: 8080},
			ProtoInfo: &netlink.ProtoInfoTCP{State: state},
		}
	}
	for _, tc := range []struct {
		name string
		flow *netlink.ConntrackFlow
		want bool
	}{
		{"a SYN the dead endpoint never answered", flow(tcpSynSent, "10.0.0.1"), true},
		{"an established connection", flow(3, "10.0.0.1"), false},
		{"a SYN to another endpoint", flow(tcpSynSent, "10.0.0.2"), false},
	} {
		if got := f.Match(tc.flow); got != tc.want {
			t.Errorf("%s: match = %v, want %v", tc.name, got, tc.want)
		}
	}
}
