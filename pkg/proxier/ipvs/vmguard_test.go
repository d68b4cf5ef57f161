//go:build ipvsvm

package ipvs

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/proxyd/proxyd/pkg/model"
)

// TestVMSourceRanges checks loadBalancerSourceRanges on real packets: a
// load-balancer IP admits its ranges and drops the rest (a Pod, the node),
// its NodePort and ClusterIP stay open, one without endpoints refuses what
// the ranges admit and drops the rest, and a change of only the ranges is
// one incremental write that takes effect. The node's address is
// 192.168.99.1, the client's (192.168.99.2) gateway.
func TestVMSourceRanges(t *testing.T) {
	_, pod2, cl, p := twoPods(t)
	build := func(ranges ...string) *model.State {
		lb := lbPort(prefixes(ranges...), "192.0.2.20")
		lb.ClusterEndpoints, lb.ExternalEndpoints = lb.ClusterEndpoints[:1], lb.ClusterEndpoints[:1]
		empty := sp("lbe", model.TCP, "10.96.0.85", 80)
		empty.LoadBalancerIPs, empty.ExternalIPs, empty.SourceRanges = []netip.Addr{addr("192.0.2.21")}, []netip.Addr{addr("192.0.2.21")}, lb.SourceRanges
		s := state(lb, empty)
		s.Node.IPs = []netip.Addr{addr("192.168.99.1")}
		return s
	}
	// The client's range holds the node's address: the node is admitted
	// too, from the load-balancer IP, its source for a local address.
	s1 := build("192.168.99.0/24")
	if err := p.Sync(context.Background(), s1, model.Compute(nil, s1)); err != nil {
		t.Fatal(err)
	}
	if routes, err := netlink.RouteGet(net.ParseIP("192.0.2.20")); err == nil && len(routes) > 0 {
		t.Logf("the node reaches 192.0.2.20 from %v", routes[0].Src)
	}
	check(t, "ranges 192.168.99.0/24", []reach{
		{"a client inside the ranges", cl, "192.0.2.20:80", "answered"},
		{"a Pod outside the ranges", pod2, "192.0.2.20:80", "timeout"},
		{"the node, as a range holds its address", -1, "192.0.2.20:80", "answered"},
		{"the NodePort, from a Pod outside the ranges", pod2, "192.168.99.1:30084", "answered"},
		{"the ClusterIP, from a Pod outside the ranges", pod2, "10.96.0.84:80", "answered"},
		{"a client inside the ranges, no endpoints", cl, "192.0.2.21:80", "refused"},
		{"a Pod outside the ranges, no endpoints", pod2, "192.0.2.21:80", "timeout"},
	})

	s2 := build("10.244.2.0/24")
	if err := p.Sync(context.Background(), s2, model.Compute(s1, s2)); err != nil {
		t.Fatal(err)
	}
	if st := p.LastSyncStats(); st.Full || st.KernelOps != 1 {
		t.Errorf("only the ranges changed: %+v, want one incremental write", st)
	}
	check(t, "ranges 10.244.2.0/24", []reach{
		{"a Pod inside the new ranges", pod2, "192.0.2.20:80", "answered"},
		{"a client outside the new ranges", cl, "192.0.2.20:80", "timeout"},
		{"the node, as no range holds its address", -1, "192.0.2.20:80", "timeout"},
		{"the NodePort, from a client outside the ranges", cl, "192.168.99.1:30084", "answered"},
	})
}

// reach is one connection attempt and its expected outcome: "answered"
// (the Pod's whoAmI replied), "refused" or "timeout".
type reach struct {
	what string
	from netns.NsHandle // < 0: the node itself
	to   string
	want string
}

func check(t *testing.T, phase string, cases []reach) {
	t.Helper()
	for _, c := range cases {
		var got string
		var d time.Duration
		if c.want == "answered" {
			start := time.Now()
			got = ask(t, c.from, c.to)
			d = time.Since(start)
			if !strings.HasPrefix(got, "error") && net.ParseIP(got) != nil {
				got = "answered by " + got
			}
		} else if c.from < 0 {
			got, d = dial(t, c.to)
		} else {
			got, d = dialFrom(t, c.from, c.to)
		}
		t.Logf("%s: %s (%s): %s after %v", phase, c.what, c.to, got, d.Round(time.Millisecond))
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("%s: %s (%s): %s, want %s", phase, c.what, c.to, got, c.want)
		}
	}
}
