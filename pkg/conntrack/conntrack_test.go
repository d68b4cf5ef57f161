package conntrack

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
)

func TestFiltersCoverOnlyDatagramProtocols(t *testing.T) {
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
		{Proto: model.UDP, VIP: vip[0]},
	}
	if !slices.Equal(got, want) {
		t.Errorf("filters = %+v, want %+v", got, want)
	}
}
