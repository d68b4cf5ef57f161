package explain

import (
	"context"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/testenv"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/nftables"
)

func TestKernelNFTables(t *testing.T) {
	testenv.NeedTool(t, "nft")
	inNewNetns(t, "TestKernelNFTablesInNetns")
}

// The real nftables backend writes the flow spec's State in the test's
// namespace; explain reads it back over netlink and traces it.
func TestKernelNFTablesInNetns(t *testing.T) {
	inNetns(t)
	ctx := context.Background()
	nodeNetwork(t)
	s := flowspec.State()
	p, err := nftables.New(flowspec.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Sync(ctx, s, model.Compute(nil, s)); err != nil {
		t.Fatal(err)
	}
	reader, err := conntrack.NewReader(0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	explain := explainWith(&Explainer{Dataplane: &NFTables{Config: p.Config(), Families: p.Families()}, Conntrack: reader,
		State: func() *model.State { return s }, ReadBy: "test"})
	web := netip.AddrPortFrom(flowspec.WebVIP, 80)
	pods := []netip.AddrPort{netip.AddrPortFrom(flowspec.Pod1, 8080), netip.AddrPortFrom(flowspec.Pod2, 8080), netip.AddrPortFrom(flowspec.Pod3, 8080)}

	clusterIPAndNodeCases(t, explain, web, pods, func(rule string) bool {
		return rule == "ip daddr . meta l4proto . th dport vmap @service-ips"
	})

	t.Run("after a real sticky connection its affinity element is named and followed", func(t *testing.T) {
		sticky := netip.AddrPortFrom(flowspec.StickyVIP, 80)
		// A SYN from the node: the output hook's DNAT puts the node's
		// address in the chosen endpoint's dynamic set.
		knock(sticky)
		r := explain(t, flowspec.NodeIP, sticky)
		if len(r.Affinity) != 1 {
			t.Fatalf("affinity %+v, want one entry", r.Affinity)
		}
		a := r.Affinity[0]
		set := nftables.AffinitySet(model.ServicePortKey{Namespace: "default", Name: "sticky", Port: "p", Protocol: model.TCP}, a.Endpoint)
		if !a.Active || a.Where != "dynamic set ip proxyd @"+set || a.Timeout != 3*time.Hour || !a.AgeKnown || a.Age > time.Minute || a.Expires < 3*time.Hour-time.Minute {
			t.Errorf("affinity %+v, want a fresh entry in @%s with the Service's timeout", a, set)
		}
		if len(r.Outcomes) != 1 || r.Outcomes[0].Endpoint != a.Endpoint || r.Outcomes[0].Probability != 1 {
			t.Errorf("outcomes %+v, want all to the affinity's endpoint %v", r.Outcomes, a.Endpoint)
		}
		if r.ConntrackOther != 1 {
			t.Errorf("%d unanswered entries, want the one SYN", r.ConntrackOther)
		}
		if !r.Drift.Known || len(r.Drift.Differences) != 0 {
			t.Errorf("the element the SYN added is drift: %+v", r.Drift)
		}
	})

	t.Run("an established connection in conntrack is listed with its endpoint", func(t *testing.T) {
		established(t, web, pods[1])
		r := explain(t, flowspec.Client, web)
		if len(r.Conntrack) != 1 || r.Conntrack[0].Endpoint != pods[1] || r.Conntrack[0].State != "ESTABLISHED" {
			t.Errorf("conntrack %+v", r.Conntrack)
		}
	})

	t.Run("an endpoint deleted by hand from the endpoint map is drift, and the trace follows the kernel", func(t *testing.T) {
		m := nftables.EndpointsMap(model.TCP)
		sh(t, "nft", "delete", "element", "ip", nftables.TableName, m, "{ 10.96.0.10 . 80 . 0 }")
		r := explain(t, flowspec.Client, web)
		want := "ip proxyd: map " + m + ": element missing: 10.96.0.10 . 80 . 0 : 10.244.1.11 . 8080"
		if !r.Drift.Known || len(r.Drift.Differences) != 1 || r.Drift.Differences[0] != want {
			t.Errorf("drift %q, want %q", r.Drift.Differences, want)
		}
		// The number 0 finds no endpoint now: a third of new connections
		// is not translated (and refused as addressed to a ClusterIP).
		var dnat, other float64
		for _, o := range r.Outcomes {
			if o.Verdict == "dnat" {
				dnat += o.Probability
				if o.Endpoint == pods[0] {
					t.Errorf("the deleted endpoint %v is still an outcome", o.Endpoint)
				}
			} else {
				other += o.Probability
			}
		}
		if math.Abs(dnat-2.0/3) > 1e-9 || math.Abs(other-1.0/3) > 1e-9 {
			t.Errorf("outcomes %+v, want the two endpoints the kernel still has at 1/3 each, and 1/3 untranslated", r.Outcomes)
		}
		if !strings.Contains(text(t, r), "!!! DRIFT") {
			t.Error("the text does not shout about the drift")
		}
	})

	t.Run("an element deleted by hand is drift, and the VIP is refused", func(t *testing.T) {
		sh(t, "nft", "delete", "element", "ip", nftables.TableName, nftables.ServiceIPsMap, "{ 10.96.0.10 . tcp . 80 }")
		r := explain(t, flowspec.Client, web)
		want := `ip proxyd: map service-ips: element missing: 10.96.0.10 . tcp . 80 comment "default/web/tcp/p" : goto ` + nftables.PickChain(model.TCP, 3)
		if !strings.Contains(strings.Join(r.Drift.Differences, "\n"), want) {
			t.Errorf("drift %q, want %q among them", r.Drift.Differences, want)
		}
		if r.Verdict != "reject" || r.Service != nil || r.MatchedBy == nil || !strings.Contains(r.MatchedBy.Rule, "@cluster-ips reject") {
			t.Errorf("verdict %s, service %v, matched by %+v: the kernel now refuses it as an unknown port of a ClusterIP", r.Verdict, r.Service, r.MatchedBy)
		}
	})
}
