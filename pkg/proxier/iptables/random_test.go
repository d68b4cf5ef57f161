package iptables

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// TestRandomChangesConverge applies random changes and checks after each
// partial sync that the tables equal a full write of the same State.
func TestRandomChangesConverge(t *testing.T) {
	cfg := flowspec.Config()
	rng := rand.New(rand.NewPCG(7, 11))
	s := syntheticState(20, 3, true)
	tp := newTestProxier(t, cfg)
	tp.sync(t, s)
	keys := slices.SortedFunc(maps.Keys(s.Services), model.ServicePortKey.Compare)
	extIPs := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8::10")}
	for i := range 300 {
		ki := rng.IntN(len(keys))
		k := keys[ki]
		switch rng.IntN(11) {
		case 8:
			s = withPort(s, k, func(sp *model.ServicePort) {
				sp.NodePort = [...]uint16{0, 30000 + uint16(ki), 31000 + uint16(ki)}[rng.IntN(3)]
				selectExternal(sp)
			})
		case 9:
			s = withPort(s, k, func(sp *model.ServicePort) {
				sp.ExternalIPs = nil
				for _, ip := range extIPs {
					if rng.IntN(2) == 0 {
						sp.ExternalIPs = append(sp.ExternalIPs, ip)
					}
				}
				selectExternal(sp)
			})
		case 10:
			s = withPort(s, k, func(sp *model.ServicePort) {
				sp.ExternalLocal = !sp.ExternalLocal
				selectExternal(sp)
			})
		case 6:
			// The ServiceCIDRs come and go (the ServiceCIDR objects are
			// new in a cluster, or a range is added).
			cidrs := [][]netip.Prefix{nil, {flowspec.ServiceCIDR}, {flowspec.ServiceCIDR, flowspec.ServiceCIDRv6}}[rng.IntN(3)]
			s = withPort(s, k, func(*model.ServicePort) {})
			s.ServiceCIDRs = cidrs
		case 7:
			s = withPort(s, k, func(sp *model.ServicePort) {
				sp.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 99, 0, byte(rng.IntN(4))})} // outside the ServiceCIDRs
				sp.Port = 80
			})
		case 0:
			s = withPort(s, k, nil)
		case 1:
			s = withPort(s, k, setEndpoints())
		case 2:
			s = withPort(s, k, func(sp *model.ServicePort) {
				sp.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 200, byte(i)})}
				sp.Port = 80
			})
		case 3:
			s = withPort(s, k, func(sp *model.ServicePort) { sp.AffinitySeconds = int32(rng.IntN(2)) * 60 })
		default:
			var eps []model.Endpoint
			for range rng.IntN(4) {
				eps = append(eps, endpoint(netip.AddrFrom4([4]byte{10, 244, 9, byte(rng.IntN(8))})))
			}
			slices.SortFunc(eps, func(a, b model.Endpoint) int { return a.AddrPort().Compare(b.AddrPort()) })
			eps = slices.CompactFunc(eps, func(a, b model.Endpoint) bool { return a.AddrPort() == b.AddrPort() })
			s = withPort(s, k, func(sp *model.ServicePort) {
				if len(sp.ClusterIPs) == 0 {
					sp.ClusterIPs, sp.Port = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 201, byte(i)})}, 80
				}
				setEndpoints(eps...)(sp)
			})
		}
		if st := tp.sync(t, s); st.Full {
			t.Fatalf("step %d: unexpected full sync", i)
		}
		tp.wantKernelMatchesFullWrite(t, cfg, s)
		tp.wantStatsMatchKernel(t)
		if t.Failed() {
			t.Fatalf("step %d diverged", i)
		}
	}
}
