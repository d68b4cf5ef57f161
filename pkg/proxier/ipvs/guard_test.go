package ipvs

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// lbPort is a Cluster-policy LoadBalancer port: ClusterIP 10.96.0.84,
// NodePort 30084, the given load-balancer IPs, endpoints 10.244.1.11-12.
func lbPort(ranges []netip.Prefix, lbIPs ...string) *model.ServicePort {
	p := sp("lb", model.TCP, "10.96.0.84", 80, "10.244.1.11:8080", "10.244.1.12:8080")
	p.NodePort, p.ExternalEndpoints, p.SourceRanges = 30084, p.ClusterEndpoints, ranges
	for _, s := range lbIPs {
		p.LoadBalancerIPs = append(p.LoadBalancerIPs, addr(s))
	}
	p.ExternalIPs = slices.Clone(p.LoadBalancerIPs)
	return p
}

func lbState(ps ...*model.ServicePort) *model.State {
	s := state(ps...)
	s.Node.IPs = []netip.Addr{flowspec.NodeIP}
	return s
}

func verdict(tr *Tracer, src, dst string, fromNode bool) flowspec.Verdict {
	p := flowspec.Packet{Src: addr(src), Dst: addrPort(dst), Proto: model.TCP, FromNode: fromNode}
	return tr.Trace(p, func(uint32) uint32 { return 0 }).Verdict
}

func TestSourceRangesOnlyChangeIsWrittenIncrementally(t *testing.T) {
	r := newRig(t)
	r.sync(lbState(lbPort(prefixes("192.0.2.0/28"), "192.0.2.20")))
	before := r.fw.Applies
	r.sync(lbState(lbPort(prefixes("198.51.100.0/24"), "192.0.2.20")))
	if st := r.p.LastSyncStats(); st.Full || st.KernelOps != 1 || r.fw.Applies != before+1 {
		t.Fatalf("only the ranges changed: %+v, %d applies; want one incremental firewall write", st, r.fw.Applies-before)
	}
	want := []SourceGuard{{LB: Tuple{addr("192.0.2.20"), model.TCP, 80}, Sources: prefixes("198.51.100.0/24")}}
	if got := r.fw.Current().SourceGuards; !slices.EqualFunc(got, want, func(a, b SourceGuard) bool { return a.LB == b.LB && slices.Equal(a.Sources, b.Sources) }) {
		t.Fatalf("guards in the kernel %+v, want %+v", got, want)
	}
	tr := TracerFor(Render(r.last, "rr"), r.fw.Current())
	if got := verdict(tr, "198.51.100.7", "192.0.2.20:80", false); got != flowspec.DNAT {
		t.Errorf("a source of the new range: %v, want dnat", got)
	}
	if got := verdict(tr, "192.0.2.1", "192.0.2.20:80", false); got != flowspec.Drop {
		t.Errorf("a source of the old range: %v, want drop", got)
	}

	// The ranges go: the guard goes, again by one firewall write.
	r.sync(lbState(lbPort(nil, "192.0.2.20")))
	if st := r.p.LastSyncStats(); st.Full || st.KernelOps != 1 || len(r.fw.Current().SourceGuards) != 0 {
		t.Fatalf("ranges removed: %+v, guards %+v", st, r.fw.Current().SourceGuards)
	}
}

// An address that is both an external IP and a load-balancer IP keeps its
// virtual server when it stops being the latter; only the guard moves.
func TestLoadBalancerIPsOnlyChangeIsWrittenIncrementally(t *testing.T) {
	r := newRig(t)
	p1 := lbPort(prefixes("192.0.2.0/28"), "192.0.2.20")
	p1.ExternalIPs = []netip.Addr{addr("192.0.2.20"), addr("192.0.2.30")}
	r.sync(lbState(p1))
	p2 := lbPort(prefixes("192.0.2.0/28"), "192.0.2.30")
	p2.ExternalIPs = p1.ExternalIPs
	r.sync(lbState(p2))
	if st := r.p.LastSyncStats(); st.Full || st.KernelOps != 1 {
		t.Fatalf("only the load-balancer IPs changed: %+v, want one incremental firewall write", st)
	}
	tr := TracerFor(Render(r.last, "rr"), r.fw.Current())
	if got := verdict(tr, "198.51.100.7", "192.0.2.20:80", false); got != flowspec.DNAT {
		t.Errorf("no longer a load-balancer IP: %v, want dnat", got)
	}
	if got := verdict(tr, "198.51.100.7", "192.0.2.30:80", false); got != flowspec.Drop {
		t.Errorf("the new load-balancer IP: %v, want drop", got)
	}
}

// Ranges of both families guard the load-balancer IPs of their own family
// only; a family without ranges is not guarded.
func TestSourceRangesGuardEachFamilyByItsOwnRanges(t *testing.T) {
	p := lbPort(prefixes("192.0.2.0/28"), "192.0.2.20", "2001:db8::20")
	p.ClusterIPs = append(p.ClusterIPs, addr("fd00:10:96::84"))
	p.ClusterEndpoints = append(p.ClusterEndpoints, model.Endpoint{IP: addr("fd00:10:244:1::11"), Port: 8080, Ready: true, Serving: true})
	p.ExternalEndpoints = p.ClusterEndpoints
	tab := Render(lbState(p), "rr")
	tr := TracerFor(tab, RenderNetfilter(tab, testConfig))
	if got := verdict(tr, "198.51.100.7", "192.0.2.20:80", false); got != flowspec.Drop {
		t.Errorf("IPv4 outside the IPv4 ranges: %v, want drop", got)
	}
	if got := verdict(tr, "2001:db8:1::7", "[2001:db8::20]:80", false); got != flowspec.DNAT {
		t.Errorf("IPv6 without IPv6 ranges: %v, want dnat", got)
	}

	p.SourceRanges = prefixes("192.0.2.0/28", "2001:db8:1::/48")
	tab = Render(lbState(p), "rr")
	tr = TracerFor(tab, RenderNetfilter(tab, testConfig))
	for _, c := range []struct {
		src, dst string
		want     flowspec.Verdict
	}{
		{"2001:db8:1::7", "[2001:db8::20]:80", flowspec.DNAT},
		{"2001:db8:2::7", "[2001:db8::20]:80", flowspec.Drop},
		{"192.0.2.1", "192.0.2.20:80", flowspec.DNAT},
		{"198.51.100.7", "192.0.2.20:80", flowspec.Drop},
	} {
		if got := verdict(tr, c.src, c.dst, false); got != c.want {
			t.Errorf("%s to %s: %v, want %v", c.src, c.dst, got, c.want)
		}
	}
}

// As in kube-proxy's IPVS mode: when a range admits a node address, the
// load-balancer IP itself is admitted too, the source the node uses for an
// address bound to proxyd-ipvs0. Nested ranges collapse (the kernel's
// interval set refuses overlapping elements).
func TestSourceRangesAdmittingTheNodeAdmitTheLoadBalancerIP(t *testing.T) {
	p := lbPort(prefixes("10.88.0.0/16", "10.88.1.0/24", "192.0.2.0/28"), "192.0.2.20")
	tab := Render(lbState(p), "rr")
	r := RenderNetfilter(tab, testConfig)
	want := prefixes("10.88.0.0/16", "192.0.2.0/28", "192.0.2.20/32")
	if len(r.SourceGuards) != 1 || !slices.Equal(r.SourceGuards[0].Sources, want) {
		t.Fatalf("guards %+v, want sources %v", r.SourceGuards, want)
	}
	tr := TracerFor(tab, r)
	for _, src := range []string{"192.0.2.20", "10.88.0.2", "10.88.1.1"} {
		if got := verdict(tr, src, "192.0.2.20:80", true); got != flowspec.DNAT {
			t.Errorf("from the node as %s: %v, want dnat", src, got)
		}
	}
	p.SourceRanges = prefixes("192.0.2.0/28")
	tab = Render(lbState(p), "rr")
	if got := verdict(TracerFor(tab, RenderNetfilter(tab, testConfig)), "192.0.2.20", "192.0.2.20:80", true); got != flowspec.Drop {
		t.Errorf("ranges without a node address, from the node as the load-balancer IP: %v, want drop", got)
	}
}

// With externalTrafficPolicy Local the guard runs before the DNAT that
// sends Pods and the node to the ClusterIP: a Pod outside the ranges is
// dropped, one inside gets the whole Service.
func TestSourceRangesGuardBeforeTheLocalShortCircuit(t *testing.T) {
	p := lbPort(prefixes("10.244.1.0/24"), "192.0.2.20")
	p.ExternalLocal, p.ExternalEndpoints = true, nil
	tab := Render(lbState(p), "rr")
	tr := TracerFor(tab, RenderNetfilter(tab, testConfig))
	if got := verdict(tr, "10.244.2.5", "192.0.2.20:80", false); got != flowspec.Drop {
		t.Errorf("a Pod outside the ranges: %v, want drop", got)
	}
	if got := verdict(tr, "10.244.1.100", "192.0.2.20:80", false); got != flowspec.DNAT {
		t.Errorf("a Pod inside the ranges: %v, want dnat to the whole Service", got)
	}
	if got := verdict(tr, "10.244.2.5", "10.88.0.2:30084", false); got != flowspec.DNAT {
		t.Errorf("the NodePort, from a Pod outside the ranges: %v, want dnat (NodePorts are not guarded)", got)
	}
}
