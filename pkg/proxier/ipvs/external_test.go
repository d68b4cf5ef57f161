package ipvs

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/internal/golden"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// extState is a dual-stack node with a Cluster-policy NodePort Service with
// an external IP, and a Local-policy one whose only local endpoint is IPv4.
func extState() *model.State {
	np := sp("np", model.TCP, "10.96.0.80", 80, "10.244.1.11:8080", "[fd00:10:244:1::11]:8080")
	np.ClusterIPs = append(np.ClusterIPs, addr("fd00:10:96::80"))
	np.NodePort, np.ExternalIPs = 30080, []netip.Addr{addr("192.0.2.10"), addr("2001:db8::10")}
	np.ExternalEndpoints = np.ClusterEndpoints
	local := sp("local", model.UDP, "10.96.0.81", 53, "10.244.1.11:53", "10.244.2.5:53", "[fd00:10:244:2::5]:53")
	local.ClusterIPs = append(local.ClusterIPs, addr("fd00:10:96::81"))
	local.NodePort, local.ExternalLocal, local.AffinitySeconds = 30053, true, 60
	local.ExternalEndpoints = local.ClusterEndpoints[:1]
	s := state(np, local)
	s.Node.IPs = []netip.Addr{addr("10.88.0.2"), addr("fd00:88::2")}
	return s
}

func TestRenderExternalGolden(t *testing.T) {
	tab := Render(extState(), "rr")
	cfg := proxier.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}}
	golden.Check(t, "external.golden", tab.String()+"\n"+RenderNetfilter(tab, cfg).String())
}

func TestExternalIPsAreBoundNodeIPsAreNot(t *testing.T) {
	r := newRig(t)
	s := extState()
	r.sync(s)
	bound, _ := r.links.Addrs(LinkName)
	want := []netip.Addr{addr("10.96.0.80"), addr("10.96.0.81"), addr("192.0.2.10"), addr("2001:db8::10"), addr("fd00:10:96::80"), addr("fd00:10:96::81")}
	if !equalAddrs(bound, want) {
		t.Fatalf("bound %v, want %v", bound, want)
	}
	if got, want := r.dump(), stripComments(Render(s, "rr").String()); got != want {
		t.Fatalf("kernel:\n%s\nwant:\n%s", got, want)
	}
}

func TestNodePortVirtualServersAreOwnedByKey(t *testing.T) {
	r := newRig(t)
	// Someone else's virtual server on the node's address.
	foreign := svc4("10.88.0.2", 443, "wlc")
	if err := r.h.NewService(foreign); err != nil {
		t.Fatal(err)
	}
	s := flowspec.State()
	r.sync(s)
	if got := r.dump(); !strings.Contains(got, "TCP  10.88.0.2:443 wlc\n") || !strings.Contains(got, "TCP  10.88.0.2:30080 rr\n") {
		t.Fatalf("kernel:\n%s", got)
	}
	// A NodePort Service goes: its virtual server goes, the foreign one stays.
	s2 := flowspec.Snapshot()
	delete(s2.Services, model.NamespacedName{Namespace: "default", Name: "np"})
	st2 := model.Build(s2)
	r.sync(st2)
	got := r.dump()
	if strings.Contains(got, "10.88.0.2:30080") || strings.Contains(got, "192.0.2.10:80") || !strings.Contains(got, "TCP  10.88.0.2:443 wlc\n") {
		t.Fatalf("after the NodePort Service went:\n%s", got)
	}

	// A new proxyd (restart) that no longer wants nplocal finds its NodePort
	// virtual server through the nftables table's record.
	p2, err := New(flowspec.Config(), WithHandle(r.h), WithLinks(r.links), WithFirewall(r.fw), WithSysctl(func(string, string) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	delete(s2.Services, model.NamespacedName{Namespace: "default", Name: "nplocal"})
	st3 := model.Build(s2)
	if err := p2.Sync(context.Background(), st3, model.Compute(nil, st3)); err != nil {
		t.Fatal(err)
	}
	got = dumpHandle(t, r.h)
	if strings.Contains(got, "10.88.0.2:30081") || !strings.Contains(got, "10.88.0.2:30082") || !strings.Contains(got, "TCP  10.88.0.2:443 wlc\n") {
		t.Fatalf("after a restart:\n%s", got)
	}
	// Cleanup by another process removes NodePort virtual servers too.
	if err := Cleanup(context.Background(), WithHandle(r.h), WithLinks(r.links), WithFirewall(r.fw)); err != nil {
		t.Fatal(err)
	}
	if got := dumpHandle(t, r.h); got != "TCP  10.88.0.2:443 wlc\n" {
		t.Fatalf("after cleanup:\n%s", got)
	}
}

func TestExternalUpdatesAreIncremental(t *testing.T) {
	r := newRig(t)
	snap := flowspec.Snapshot()
	s1 := model.Build(snap)
	r.sync(s1)
	// The Local Service without a local endpoint gains one: its NodePort
	// virtual server gets a real server and stops dropping.
	for k, es := range snap.Slices {
		if es.ServiceName == "npremote" {
			c := *es
			c.Endpoints = append([]model.SliceEndpoint{{Addresses: []netip.Addr{flowspec.Pod1}, Ready: true, Serving: true, NodeName: flowspec.NodeName}}, es.Endpoints...)
			snap.Slices[k] = &c
		}
	}
	s2 := model.Build(snap)
	r.sync(s2)
	if st := r.p.LastSyncStats(); st.Full || st.KernelOps == 0 || st.KernelOps > 6 {
		t.Fatalf("stats %+v, want a few incremental ops", st)
	}
	if !strings.Contains(r.dump(), "TCP  10.88.0.2:30082 rr\n  -> 10.244.1.11:8080 Masq 1\n") {
		t.Fatalf("kernel:\n%s", r.dump())
	}
	if rs := r.fw.Current(); slices.Contains(rs.ExternalDrop, Tuple{flowspec.NodeIP, model.TCP, 30082}) {
		t.Fatal("still dropping")
	}
	tr := TracerFor(Render(s2, "rr"), r.fw.Current())
	got := tr.Trace(flowspec.Packet{Src: flowspec.ExternalClient, Dst: netip.AddrPortFrom(flowspec.NodeIP, 30082), Proto: model.TCP}, func(uint32) uint32 { return 0 })
	if got.Verdict != flowspec.DNAT || got.Endpoint != netip.AddrPortFrom(flowspec.Pod1, flowspec.EchoPort) || got.Masquerade {
		t.Fatalf("%+v", got)
	}
}

func TestPersistenceTemplateExpiresWithItsRealServer(t *testing.T) {
	s := state(func() *model.ServicePort {
		p := sp("sticky", model.TCP, "10.96.0.90", 80, "10.244.1.11:8080", "10.244.1.12:8080")
		p.AffinitySeconds = 60
		return p
	}())
	tab := Render(s, "rr")
	tr := TracerFor(tab, RenderNetfilter(tab, testConfig))
	p := flowspec.Packet{Src: flowspec.Client, Dst: addrPort("10.96.0.90:80"), Proto: model.TCP}
	first := tr.Trace(p, func(uint32) uint32 { return 0 })
	for i := range 20 {
		if got := tr.Trace(p, func(n uint32) uint32 { return uint32(i) % n }); got.Endpoint != first.Endpoint {
			t.Fatalf("moved from %v to %v", first.Endpoint, got.Endpoint)
		}
	}
	// Another client is scheduled on its own.
	other := p
	other.Src = addr("10.244.1.101")
	if got := tr.Trace(other, func(n uint32) uint32 { return n - 1 }); got.Endpoint == first.Endpoint {
		t.Fatalf("second client got the first's template: %v", got.Endpoint)
	}
	// Draining the real server expires the template.
	for i := range tab.Servers[VSKey{addr("10.96.0.90"), model.TCP, 80}].RealServers {
		rs := &tab.Servers[VSKey{addr("10.96.0.90"), model.TCP, 80}].RealServers[i]
		if rs.Addr == first.Endpoint {
			rs.Weight = 0
		}
	}
	if got := tr.Trace(p, func(uint32) uint32 { return 0 }); got.Verdict != flowspec.DNAT || got.Endpoint == first.Endpoint {
		t.Fatalf("after draining %v: %+v", first.Endpoint, got)
	}
}
