package ipvs

import (
	"net/netip"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func TestFlowspec(t *testing.T) {
	for _, sched := range []string{"rr", "wrr", "lc", "wlc", "sed", "nq"} {
		t.Run(sched, func(t *testing.T) {
			tr, err := NewTracer(flowspec.State(), flowspec.Config(), sched)
			if err != nil {
				t.Fatal(err)
			}
			flowspec.Run(t, tr)
			flowspec.RunExternal(t, tr)
			flowspec.RunAffinity(t, tr)
		})
	}
}

func TestHashingSchedulersAreStablePerSource(t *testing.T) {
	web := netip.AddrPortFrom(flowspec.WebVIP, 80)
	for _, sched := range []string{"sh", "mh"} {
		tr, err := NewTracer(flowspec.State(), flowspec.Config(), sched)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[netip.AddrPort]bool{}
		for i := range 64 {
			src := netip.AddrFrom4([4]byte{10, 244, 3, byte(i)})
			p := flowspec.Packet{Src: src, Dst: web, Proto: model.TCP}
			first := tr.Trace(p, nil)
			if first.Verdict != flowspec.DNAT {
				t.Fatalf("%s: %+v", sched, first)
			}
			for range 5 {
				if again := tr.Trace(p, nil); again.Endpoint != first.Endpoint {
					t.Fatalf("%s: source %v moved from %v to %v", sched, src, first.Endpoint, again.Endpoint)
				}
			}
			seen[first.Endpoint] = true
		}
		if len(seen) != 3 {
			t.Errorf("%s: 64 sources reached %d of 3 endpoints", sched, len(seen))
		}
	}
}

// IPVS itself rejects a new connection to a virtual server without usable
// real servers, persistent or not, from a client or from the node: the VM
// test shows it on a real kernel, and the tracer says the same.
func TestZeroRealServersAreRejectedByIPVS(t *testing.T) {
	plain := sp("plain", model.TCP, "10.96.0.30", 80)
	sticky := sp("sticky", model.TCP, "10.96.0.31", 80)
	sticky.AffinitySeconds = 60
	drained := sp("drained", model.TCP, "10.96.0.32", 80, "10.244.1.11:8080")
	tab := Render(state(plain, sticky, drained), "rr")
	tab.Servers[VSKey{addr("10.96.0.32"), model.TCP, 80}].RealServers[0].Weight = 0
	tr := TracerFor(tab, RenderNetfilter(tab, testConfig))
	for _, ip := range []string{"10.96.0.30", "10.96.0.31", "10.96.0.32"} {
		for _, fromNode := range []bool{false, true} {
			p := flowspec.Packet{Src: flowspec.Client, Dst: netip.AddrPortFrom(addr(ip), 80), Proto: model.TCP, FromNode: fromNode}
			if got := tr.Trace(p, func(uint32) uint32 { return 0 }); got.Verdict != flowspec.Reject {
				t.Errorf("%s (from node %v): %v, want reject", ip, fromNode, got.Verdict)
			}
		}
	}
}

func TestDrainingRealServersTakeNoNewConnections(t *testing.T) {
	tab := Render(state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080")), "rr")
	tab.Servers[VSKey{addr("10.96.0.10"), model.TCP, 80}].RealServers[0].Weight = 0
	tr := TracerFor(tab, RenderNetfilter(tab, testConfig))
	for i := range 100 {
		got := tr.Trace(flowspec.Packet{Src: flowspec.Client, Dst: addrPort("10.96.0.10:80"), Proto: model.TCP}, func(n uint32) uint32 { return uint32(i) % n })
		if got.Endpoint != addrPort("10.244.1.12:8080") {
			t.Fatalf("new connection to a weight-0 real server: %+v", got)
		}
	}
}

func TestNewTracerRejectsUnknownScheduler(t *testing.T) {
	if _, err := NewTracer(flowspec.State(), flowspec.Config(), "fifo"); err == nil {
		t.Fatal("want an error")
	}
}
