package explain

import (
	"context"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/golden"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/nftables"
)

// renderedNFT is an nftables dataplane whose "kernel" holds what the
// backend renders for the flow spec's State, changed by edit (nil: as
// rendered).
func renderedNFT(edit func(*nft.Table)) *NFTables {
	return &NFTables{Config: flowspec.Config(), Local: flowspec.NodeLocal,
		Read: func(_ context.Context, f nft.Family, name string) (*nft.Table, error) {
			fam := model.IPv4
			if f == nft.IP6 {
				fam = model.IPv6
			}
			t := nftables.Render(flowspec.State(), flowspec.Config(), fam)
			if edit != nil && f == nft.IP {
				edit(t)
			}
			return t, nil
		}}
}

func explainOK(t *testing.T, x *Explainer, q Query) *Report {
	t.Helper()
	r, err := x.Explain(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func text(t *testing.T, r *Report) string {
	t.Helper()
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestNFTablesReportNamesServiceRulePathAndOutcomes(t *testing.T) {
	r := explainOK(t, explainer(renderedNFT(nil)), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP})
	golden.Check(t, "nftables-web-from-client.txt", text(t, r))
	if r.Service == nil || r.Service.Name != "web" || r.Service.Port != "p" || r.Service.Kind != "ClusterIP" ||
		r.MatchedBy == nil || !strings.Contains(r.MatchedBy.Rule, "vmap @service-ips") {
		t.Errorf("service %+v matched by %+v", r.Service, r.MatchedBy)
	}
	for _, o := range r.Outcomes {
		if math.Abs(o.Probability-1.0/3) > 1e-12 {
			t.Errorf("%v: %v, want exactly 1/3", o.Endpoint, o.Probability)
		}
	}
}

func TestNFTablesVerdictsAndTheirReasons(t *testing.T) {
	x := explainer(renderedNFT(nil))
	vip := netip.AddrPortFrom
	for _, tc := range []struct {
		name                string
		q                   Query
		verdict, masq, kind string
		service, why        string
	}{
		{"a NodePort from outside is masqueraded for external policy Cluster",
			Query{Src: flowspec.ExternalClient, Dst: vip(flowspec.NodeIP, 30080), Proto: model.TCP}, "dnat", "yes", "NodePort", "np", "externalTrafficPolicy Cluster"},
		{"an external IP is named by the model's kind",
			Query{Src: flowspec.ExternalClient, Dst: vip(flowspec.ExternalIP, 80), Proto: model.TCP}, "dnat", "yes", "external IP", "np", "externalTrafficPolicy Cluster"},
		{"the node's own connection leaves the cluster CIDR and is masqueraded",
			Query{Src: flowspec.NodeIP, Dst: vip(flowspec.WebVIP, 80), Proto: model.TCP, FromNode: true}, "dnat", "yes", "ClusterIP", "web", "outside the cluster CIDR 10.244.0.0/16"},
		{"a Pod reaching itself is masqueraded only through its own endpoint",
			Query{Src: flowspec.Pod1, Dst: vip(flowspec.WebVIP, 80), Proto: model.TCP}, "dnat", "for some endpoints", "ClusterIP", "web", "hairpin"},
		{"a NodePort of external policy Local keeps the client's address",
			Query{Src: flowspec.ExternalClient, Dst: vip(flowspec.NodeIP, 30081), Proto: model.TCP}, "dnat", "no", "NodePort", "nplocal", "externalTrafficPolicy Local"},
		{"an empty Service rejects by a rule that names no Service",
			Query{Src: flowspec.Client, Dst: vip(flowspec.EmptyVIP, 80), Proto: model.TCP}, "reject", "", "", "", ""},
		{"a load-balancer IP drops a source outside its ranges",
			Query{Src: flowspec.OutsideClient, Dst: vip(flowspec.RangedLBIP, 80), Proto: model.TCP}, "drop", "", "load-balancer IP", "ranged", ""},
		{"a Pod address is untouched",
			Query{Src: flowspec.Client, Dst: vip(flowspec.Pod1, 8080), Proto: model.TCP}, "untouched", "", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := explainOK(t, x, tc.q)
			t.Logf("%s, masquerade %s: %q", r.Verdict, r.Masquerade.Decision, r.Masquerade.Why)
			if r.Verdict != tc.verdict {
				t.Errorf("verdict %q, want %q", r.Verdict, tc.verdict)
			}
			if tc.masq != "" && (r.Masquerade.Decision != tc.masq || !strings.Contains(strings.Join(r.Masquerade.Why, " "), tc.why)) {
				t.Errorf("masquerade %+v, want %q because of %q", r.Masquerade, tc.masq, tc.why)
			}
			switch {
			case tc.service == "" && r.Service != nil:
				t.Errorf("service %v, want none", r.Service)
			case tc.service != "" && (r.Service == nil || r.Service.Name != tc.service || r.Service.Kind != tc.kind):
				t.Errorf("service %+v, want %s by its %s", r.Service, tc.service, tc.kind)
			}
			if tc.verdict == "reject" && (r.MatchedBy == nil || !strings.Contains(r.MatchedBy.Rule, "@no-endpoint-services") ||
				!strings.Contains(text(t, r), "not named by the kernel's rules (proxyd's model: default/empty port p (TCP), by its ClusterIP)")) {
				t.Errorf("the rejecting rule is not named: %+v\n%s", r.MatchedBy, text(t, r))
			}
			if !r.Drift.Known || len(r.Drift.Differences) != 0 {
				t.Errorf("drift %+v", r.Drift)
			}
		})
	}
}

func TestNFTablesFollowsAndNamesTheKernelsAffinityEntry(t *testing.T) {
	pod2 := netip.AddrPortFrom(flowspec.Pod2, flowspec.EchoPort)
	sticky := model.ServicePortKey{Namespace: "default", Name: "sticky", Port: "p", Protocol: model.TCP}
	set := nftables.AffinitySet(sticky, pod2)
	d := renderedNFT(func(t *nft.Table) {
		s := t.Set(set)
		s.Elements = append(s.Elements, nft.Element{Key: []nft.Value{nft.AddrValue(flowspec.Client)}, Expires: 2*time.Hour + 50*time.Minute})
		// Another client's entry in another endpoint's set changes
		// nothing for this one.
		other := t.Set(nftables.AffinitySet(sticky, netip.AddrPortFrom(flowspec.Pod1, flowspec.EchoPort)))
		other.Elements = append(other.Elements, nft.Element{Key: []nft.Value{nft.AddrValue(flowspec.Pod3)}, Expires: time.Hour})
	})
	r := explainOK(t, explainer(d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.StickyVIP, 80), Proto: model.TCP})
	if len(r.Affinity) != 1 {
		t.Fatalf("affinity %+v, want the client's one entry", r.Affinity)
	}
	a := r.Affinity[0]
	if a.Endpoint != pod2 || !a.Active || a.Timeout != 3*time.Hour || !a.AgeKnown || a.Age != 10*time.Minute || !strings.Contains(a.Where, "@"+set) {
		t.Errorf("affinity %+v, want %v in @%s, 10 min old", a, pod2, set)
	}
	if len(r.Outcomes) != 1 || r.Outcomes[0].Endpoint != pod2 || r.Outcomes[0].Probability != 1 {
		t.Errorf("outcomes %+v, want %v for certain", r.Outcomes, pod2)
	}
	if !r.Drift.Known || len(r.Drift.Differences) != 0 {
		t.Errorf("an entry packets put in a dynamic set is drift: %+v", r.Drift)
	}
	t.Logf("\n%s", text(t, r))
}

func TestNFTablesDriftIsLoudAndTheTraceFollowsTheKernel(t *testing.T) {
	d := renderedNFT(func(t *nft.Table) {
		m := t.Set(nftables.ServiceIPsMap)
		for i, e := range m.Elements {
			if e.Key[0].Addr() == flowspec.WebVIP {
				m.Elements = append(m.Elements[:i], m.Elements[i+1:]...)
				break
			}
		}
	})
	r := explainOK(t, explainer(d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP})
	diff := strings.Join(r.Drift.Differences, "\n")
	if !r.Drift.Known || !strings.Contains(diff, "ip proxyd: map service-ips: element missing: 10.96.0.10 . tcp . 80 comment \"default/web/tcp/p\" : goto pick-tcp-3") {
		t.Errorf("drift %+v", r.Drift)
	}
	if r.Verdict != "reject" || r.Service != nil {
		t.Errorf("the kernel refuses the VIP's port now (cluster-ips), yet explain says %s to %v", r.Verdict, r.Service)
	}
	if out := text(t, r); !strings.Contains(out, "!!! DRIFT") {
		t.Errorf("the text does not shout:\n%s", out)
	}
}

func TestNFTablesWithoutATableSaysSoAndTracesNothing(t *testing.T) {
	d := &NFTables{Config: flowspec.Config(), Local: flowspec.NodeLocal,
		Read: func(context.Context, nft.Family, string) (*nft.Table, error) { return nil, nil }}
	r := explainOK(t, explainer(d), Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP})
	if r.Verdict != "untouched" || !strings.Contains(strings.Join(r.Notes, " "), "no table ip proxyd") {
		t.Errorf("verdict %s, notes %q", r.Verdict, r.Notes)
	}
	if d := r.Drift.Differences; len(d) < 2 || d[0] != "table ip proxyd is missing" || d[1] != "table ip6 proxyd is missing" {
		t.Errorf("drift %q", d)
	}
}

// explain reads whatever rules the tracer follows, not today's shape: a
// table that picks endpoints through per-endpoint chains, at odds of one
// in four and three in four, is explained just as well.
func TestNFTablesExplainsAnyRuleShapeTheTracerFollows(t *testing.T) {
	key := []nft.Field{nft.IPDaddr, nft.MetaL4Proto, nft.THDport}
	a, b := netip.MustParseAddrPort("10.244.1.11:8080"), netip.MustParseAddrPort("10.244.1.12:8080")
	table := &nft.Table{Family: nft.IP, Name: nftables.TableName,
		Sets: []*nft.Set{{Name: "vips", Key: nft.KeyTypes(key...), Data: []nft.Type{nft.TypeVerdict}, Elements: []nft.Element{
			{Key: []nft.Value{nft.AddrValue(flowspec.WebVIP), nft.NumValue(6), nft.NumValue(80)}, Verdict: nft.Jump("svc-default/web/tcp/p")},
		}}},
		Chains: []*nft.Chain{
			{Name: "pre", Base: &nft.Base{Type: nft.NAT, Hook: nft.Prerouting, Priority: -100}, Rules: []nft.Rule{{nft.Vmap{Key: key, Map: "vips"}}}},
			{Name: "svc-default/web/tcp/p", Rules: []nft.Rule{
				{nft.Numgen{Mod: 4}, nft.Goto("ep-a")},
				{nft.Goto("ep-b")},
			}},
			{Name: "ep-a", Rules: []nft.Rule{{nft.Proto{Proto: 6}, nft.DNAT{To: a}}}},
			{Name: "ep-b", Rules: []nft.Rule{{nft.Proto{Proto: 6}, nft.DNAT{To: b}}}},
		}}
	d := &NFTables{Local: flowspec.NodeLocal, Read: func(_ context.Context, f nft.Family, _ string) (*nft.Table, error) {
		if f == nft.IP {
			return table, nil
		}
		return nil, nil
	}}
	r := explainOK(t, &Explainer{Dataplane: d, ReadBy: "test"}, Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP})
	if len(r.Outcomes) != 2 || r.Outcomes[0].Endpoint != a || r.Outcomes[0].Probability != 0.25 || r.Outcomes[1].Endpoint != b || r.Outcomes[1].Probability != 0.75 {
		t.Errorf("outcomes %+v, want %v 1/4 and %v 3/4", r.Outcomes, a, b)
	}
	if r.Service == nil || r.Service.Name != "web" || r.Masquerade.Decision != "no" {
		t.Errorf("service %+v, masquerade %+v", r.Service, r.Masquerade)
	}
}
