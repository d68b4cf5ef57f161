package ipvs

import (
	"github.com/proxyd/proxyd/internal/golden"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func TestRenderFlowspecStateGolden(t *testing.T) {
	tab := Render(flowspec.State(), DefaultScheduler)
	golden.Check(t, "flowspec.golden", tab.String()+"\n"+RenderNetfilter(tab, flowspec.Config()).String())
}

func TestRenderGolden(t *testing.T) {
	sticky := sp("sticky", model.TCP, "10.96.0.80", 443, "10.244.1.11:8443", "10.244.2.5:8443")
	sticky.AffinitySeconds = 10800
	dual := sp("dual", model.UDP, "10.96.0.53", 53, "10.244.1.11:53", "[fd00:10:244:1::11]:53")
	dual.ClusterIPs = append(dual.ClusterIPs, addr("fd00:10:96::53"))
	clash := sp("zz-clash", model.TCP, "10.96.0.80", 443, "10.244.9.9:1")
	s := state(sticky, dual, clash, sp("sctp", model.SCTP, "10.96.0.60", 9999))
	tab := Render(s, "sh")
	cfg := proxier.Config{MasqueradeAll: true, MasqueradeMark: 1 << 3}
	golden.Check(t, "render.golden", tab.String()+"\n"+RenderNetfilter(tab, cfg).String())
}

func TestRenderPicksTheFamilyOfEachClusterIP(t *testing.T) {
	dual := sp("dual", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "[fd00:10:244:1::11]:8080")
	dual.ClusterIPs = append(dual.ClusterIPs, addr("fd00:10:96::10"))
	tab := Render(state(dual), "rr")
	v4 := tab.Servers[VSKey{addr("10.96.0.10"), model.TCP, 80}]
	v6 := tab.Servers[VSKey{addr("fd00:10:96::10"), model.TCP, 80}]
	if v4 == nil || v6 == nil || len(v4.RealServers) != 1 || len(v6.RealServers) != 1 ||
		!v4.RealServers[0].Addr.Addr().Is4() || !v6.RealServers[0].Addr.Addr().Is6() {
		t.Fatalf("dual-stack rendering:\n%s", tab)
	}
}

func TestRenderNilStateIsEmpty(t *testing.T) {
	if tab := Render(nil, "rr"); len(tab.Servers) != 0 {
		t.Fatal(tab)
	}
}

func TestRulesetHasNoMasqueradeMarkWithoutClusterCIDR(t *testing.T) {
	tab := Render(flowspec.State(), "rr")
	r := RenderNetfilter(tab, proxier.Config{})
	// Only external traffic of externalTrafficPolicy Cluster is marked.
	if got := r.ruleText("mark-masq"); len(got) != 2 || !strings.Contains(got[0], "@external-masq-v4") || !strings.Contains(got[1], "@external-masq-v6") {
		t.Fatalf("mark rules without a cluster CIDR: %v", got)
	}
	r = RenderNetfilter(tab, flowspec.Config())
	if got := strings.Join(r.ruleText("mark-masq"), "\n"); !strings.Contains(got, "ip saddr != 10.244.0.0/16") || !strings.Contains(got, "ip6 saddr != fd00:10:244::/56") {
		t.Fatalf("mark rules: %s", got)
	}
}

// ruleText lists the nft text of a chain's rules.
func (r *Ruleset) ruleText(chain string) []string {
	var out []string
	for _, rl := range r.Table().Chain(chain).Rules {
		out = append(out, rl.Text(nft.INet))
	}
	return out
}
