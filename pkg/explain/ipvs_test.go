package explain

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"

	"github.com/proxyd/proxyd/internal/golden"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/ipvs"
)

// ipvsRig is the IPVS backend synced with the flow spec's State onto
// fakes that answer like the kernel, and an IPVS dataplane reading them.
type ipvsRig struct {
	h     *ipvs.Fake
	links *ipvs.FakeLinks
	fw    *ipvs.FakeFirewall
	conns string
	d     *IPVS
}

func newIPVSRig(t *testing.T, scheduler string) *ipvsRig {
	t.Helper()
	r := &ipvsRig{h: ipvs.NewFake(), links: ipvs.NewFakeLinks(), fw: &ipvs.FakeFirewall{}, conns: filepath.Join(t.TempDir(), "ip_vs_conn")}
	r.writeConns(t)
	p, err := ipvs.New(flowspec.Config(), ipvs.WithHandle(r.h), ipvs.WithLinks(r.links), ipvs.WithFirewall(r.fw),
		ipvs.WithScheduler(scheduler), ipvs.WithSysctl(func(string, string) error { return nil }), ipvs.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	s := flowspec.State()
	if err := p.Sync(context.Background(), s, model.Compute(nil, s)); err != nil {
		t.Fatal(err)
	}
	local := func(a netip.Addr) bool {
		bound, _ := r.links.Addrs(ipvs.LinkName)
		return flowspec.NodeLocal(a) || slices.Contains(bound, a)
	}
	r.d = &IPVS{Config: p.Config(), Scheduler: p.Scheduler(), Local: local, Open: func() (*ipvs.Kernel, error) {
		return &ipvs.Kernel{Handle: r.h, Links: r.links, Firewall: r.fw, Conns: r.conns}, nil
	}}
	return r
}

// writeConns writes IPVS's connection table as the kernel prints it.
func (r *ipvsRig) writeConns(t *testing.T, lines ...string) {
	t.Helper()
	body := "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n" + strings.Join(lines, "")
	if err := os.WriteFile(r.conns, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func hex4(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%02X%02X%02X%02X", b[0], b[1], b[2], b[3])
}

func TestIPVSReportNamesTheVirtualServerSchedulerAndShares(t *testing.T) {
	r := newIPVSRig(t, "rr")
	rep := explainOK(t, explainer(r.d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP})
	golden.Check(t, "ipvs-web-from-client.txt", text(t, rep))
	if rep.Service != nil || rep.MatchedBy == nil || !strings.HasPrefix(rep.MatchedBy.Rule, "TCP 10.96.0.10:80 rr") ||
		rep.Model == nil || rep.Model.Name != "web" {
		t.Errorf("service %v matched by %+v, model %v: IPVS names no Service, the model does", rep.Service, rep.MatchedBy, rep.Model)
	}
	if len(rep.Outcomes) != 3 {
		t.Fatalf("outcomes %+v", rep.Outcomes)
	}
	for _, o := range rep.Outcomes {
		if math.Abs(o.Probability-1.0/3) > 1e-12 || o.Masquerade {
			t.Errorf("%v: %v, masquerade %v; want 1/3 each, not masqueraded", o.Endpoint, o.Probability, o.Masquerade)
		}
	}
	if sc := rep.Scheduler; sc == nil || sc.Name != "rr" || len(sc.Weights) != 3 || !strings.Contains(sc.Does, "round robin") {
		t.Errorf("scheduler %+v", sc)
	}
	if !rep.Drift.Known || len(rep.Drift.Differences) != 0 {
		t.Errorf("drift %+v", rep.Drift)
	}
}

func TestIPVSVerdictsAndTheirReasons(t *testing.T) {
	x := explainer(newIPVSRig(t, "rr").d)
	vip := netip.AddrPortFrom
	for _, tc := range []struct {
		name          string
		q             Query
		verdict, masq string
		why           string
	}{
		{"a NodePort from outside is masqueraded for external policy Cluster",
			Query{Src: flowspec.ExternalClient, Dst: vip(flowspec.NodeIP, 30080), Proto: model.TCP}, "dnat", "yes", "externalTrafficPolicy Cluster"},
		{"the node's own connection is masqueraded, from outside the cluster CIDR",
			Query{Src: flowspec.NodeIP, Dst: vip(flowspec.WebVIP, 80), Proto: model.TCP, FromNode: true}, "dnat", "yes", "outside the cluster CIDR 10.244.0.0/16"},
		{"a Pod reaching itself is masqueraded only through its own endpoint",
			Query{Src: flowspec.Pod1, Dst: vip(flowspec.WebVIP, 80), Proto: model.TCP}, "dnat", "for some endpoints", "hairpin"},
		{"a client inside the cluster CIDR keeps its address",
			Query{Src: flowspec.Client, Dst: vip(flowspec.DNSVIP, 53), Proto: model.UDP}, "dnat", "no", "inside the cluster CIDR"},
		{"an empty Service is refused by IPVS itself",
			Query{Src: flowspec.Client, Dst: vip(flowspec.EmptyVIP, 80), Proto: model.TCP}, "reject", "", ""},
		{"a ClusterIP on a port no Service has is refused by the table",
			Query{Src: flowspec.Client, Dst: vip(flowspec.WebVIP, 81), Proto: model.TCP}, "reject", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := explainOK(t, x, tc.q)
			t.Logf("%s matched by %+v, masquerade %s: %q", r.Verdict, r.MatchedBy, r.Masquerade.Decision, r.Masquerade.Why)
			if r.Verdict != tc.verdict {
				t.Errorf("verdict %q, want %q", r.Verdict, tc.verdict)
			}
			if tc.masq != "" && (r.Masquerade.Decision != tc.masq || !strings.Contains(strings.Join(r.Masquerade.Why, " "), tc.why)) {
				t.Errorf("masquerade %+v, want %q because of %q", r.Masquerade, tc.masq, tc.why)
			}
			if r.MatchedBy == nil {
				t.Error("no rule or virtual server named")
			}
			if !r.Drift.Known || len(r.Drift.Differences) != 0 {
				t.Errorf("drift %+v", r.Drift)
			}
		})
	}
}

func TestIPVSFollowsAndNamesTheKernelsPersistenceTemplate(t *testing.T) {
	r := newIPVSRig(t, "rr")
	pod3 := netip.AddrPortFrom(flowspec.Pod3, flowspec.EchoPort)
	r.writeConns(t,
		// The client's template, a connection it placed, and another
		// client's template.
		fmt.Sprintf("TCP %s 0000 %s 0050 %s 1F90 NONE          10790\n", hex4(flowspec.Client), hex4(flowspec.StickyVIP), hex4(pod3.Addr())),
		fmt.Sprintf("TCP %s A1B2 %s 0050 %s 1F90 ESTABLISHED     899\n", hex4(flowspec.Client), hex4(flowspec.StickyVIP), hex4(pod3.Addr())),
		fmt.Sprintf("TCP %s 0000 %s 0050 %s 1F90 ASSURED       10000\n", hex4(flowspec.Pod1), hex4(flowspec.StickyVIP), hex4(flowspec.Pod2)),
	)
	rep := explainOK(t, explainer(r.d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.StickyVIP, 80), Proto: model.TCP})
	if len(rep.Affinity) != 1 || rep.Affinity[0].Endpoint != pod3 || !rep.Affinity[0].Active || rep.Affinity[0].Expires != 10790*time.Second ||
		rep.Affinity[0].Timeout != 3*time.Hour || !strings.Contains(rep.Affinity[0].Where, "persistence template") {
		t.Fatalf("affinity %+v, want the client's template to %v", rep.Affinity, pod3)
	}
	if len(rep.Outcomes) != 1 || rep.Outcomes[0].Endpoint != pod3 || rep.Outcomes[0].Probability != 1 {
		t.Errorf("outcomes %+v, want %v for certain", rep.Outcomes, pod3)
	}
	if !strings.Contains(rep.Scheduler.Does, "persistent") {
		t.Errorf("scheduler %+v", rep.Scheduler)
	}
	t.Logf("\n%s", text(t, rep))

	// A template to a drained real server is one IPVS drops: the next
	// connection is scheduled anew.
	svc := &mobyipvs.Service{AddressFamily: 2, Protocol: 6, Address: flowspec.StickyVIP.AsSlice(), Port: 80, SchedName: "rr", Flags: 1, Timeout: 10800, Netmask: 0xffffffff}
	if err := r.h.UpdateDestination(svc, &mobyipvs.Destination{Address: pod3.Addr().AsSlice(), Port: pod3.Port(), Weight: 0, ConnectionFlags: mobyipvs.ConnectionFlagMasq}); err != nil {
		t.Fatal(err)
	}
	rep = explainOK(t, explainer(r.d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.StickyVIP, 80), Proto: model.TCP})
	if len(rep.Affinity) != 1 || rep.Affinity[0].Active || len(rep.Outcomes) != 2 {
		t.Errorf("after draining %v: affinity %+v, outcomes %+v", pod3, rep.Affinity, rep.Outcomes)
	}
	if d := strings.Join(rep.Drift.Differences, "\n"); !strings.Contains(d, "real server 10.244.1.13:8080 of TCP 10.96.0.90:80 has weight 0, want 1") {
		t.Errorf("drift %q", rep.Drift.Differences)
	}
}

func TestIPVSDriftNamesWhatWasChangedByHand(t *testing.T) {
	r := newIPVSRig(t, "rr")
	web := &mobyipvs.Service{AddressFamily: 2, Protocol: 6, Address: flowspec.WebVIP.AsSlice(), Port: 80, SchedName: "rr", Netmask: 0xffffffff}
	if err := r.h.DelDestination(web, &mobyipvs.Destination{Address: flowspec.Pod2.AsSlice(), Port: flowspec.EchoPort}); err != nil {
		t.Fatal(err)
	}
	if err := r.h.DelService(&mobyipvs.Service{AddressFamily: 2, Protocol: 17, Address: flowspec.DNSVIP.AsSlice(), Port: 53}); err != nil {
		t.Fatal(err)
	}
	if err := r.links.DelAddr(ipvs.LinkName, flowspec.SCTPVIP); err != nil {
		t.Fatal(err)
	}
	rep := explainOK(t, explainer(r.d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP})
	want := []string{
		"real server 10.244.1.12:8080 of TCP 10.96.0.10:80 is missing",
		"virtual server UDP 10.96.0.20:53 is missing",
		"address 10.96.0.60 is not bound to proxyd-ipvs0: the node does not take connections to it",
	}
	if !rep.Drift.Known || !slices.Equal(rep.Drift.Differences, want) {
		t.Errorf("drift %q, want %q", rep.Drift.Differences, want)
	}
	if len(rep.Outcomes) != 2 {
		t.Errorf("the trace follows the kernel's two real servers: %+v", rep.Outcomes)
	}
	if out := text(t, rep); !strings.Contains(out, "!!! DRIFT") {
		t.Errorf("the text does not shout:\n%s", out)
	}
}

func TestIPVSHashingSchedulersShowSharesAndSaySo(t *testing.T) {
	r := newIPVSRig(t, "sh")
	rep := explainOK(t, explainer(r.d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP})
	if len(rep.Outcomes) != 3 || rep.Scheduler == nil || !strings.Contains(rep.Scheduler.Does, "hashes the client's address") ||
		!strings.Contains(rep.Scheduler.Does, "not this client's odds") {
		t.Errorf("outcomes %+v, scheduler %+v", rep.Outcomes, rep.Scheduler)
	}
	if !rep.Drift.Known || len(rep.Drift.Differences) != 0 {
		t.Errorf("drift %+v", rep.Drift)
	}
}
