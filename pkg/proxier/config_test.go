package proxier

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
)

func TestNodePortIPs(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	node := model.Node{Name: "n1", IPs: []netip.Addr{a("10.88.0.2"), a("fd00:88::2"), a("192.0.2.7")}}
	for _, tc := range []struct {
		name     string
		cfg      Config
		f        model.IPFamily
		want     []netip.Addr
		all, loX bool
	}{
		{"unset means every local address", Config{}, model.IPv4, nil, true, true},
		{"primary is the first address of the family", Config{NodePortPrimary: true}, model.IPv4, []netip.Addr{a("10.88.0.2")}, false, false},
		{"primary of IPv6", Config{NodePortPrimary: true}, model.IPv6, []netip.Addr{a("fd00:88::2")}, false, false},
		{"a range keeps the addresses inside it", Config{NodePortAddresses: []netip.Prefix{p("192.0.2.0/24")}}, model.IPv4, []netip.Addr{a("192.0.2.7")}, false, false},
		{"a zero range is every address of its family", Config{NodePortAddresses: []netip.Prefix{p("0.0.0.0/0")}}, model.IPv4, nil, true, true},
		{"a zero range of the other family opens nothing here", Config{NodePortAddresses: []netip.Prefix{p("::/0")}}, model.IPv4, nil, false, false},
		{"a loopback range allows loopback", Config{NodePortAddresses: []netip.Prefix{p("127.0.0.0/8")}}, model.IPv4, nil, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, all := tc.cfg.NodePortIPs(node, tc.f)
			if !slices.Equal(got, tc.want) || all != tc.all {
				t.Errorf("NodePortIPs = %v, %v; want %v, %v", got, all, tc.want, tc.all)
			}
			if lo := tc.cfg.NodePortsOnLoopback(tc.f); lo != tc.loX {
				t.Errorf("NodePortsOnLoopback = %v, want %v", lo, tc.loX)
			}
		})
	}
}
