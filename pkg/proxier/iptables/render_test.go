package iptables

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got, run with -update to accept):\n%s", path, diff)
	}
}

func TestRenderGolden(t *testing.T) {
	masqAll := flowspec.Config()
	masqAll.MasqueradeAll = true
	masqAll.MasqueradeMark = 1 << 12
	for _, tc := range []struct {
		name string
		s    *model.State
		cfg  proxier.Config
		fam  model.IPFamily
	}{
		{"flowspec-ipv4.restore", flowspec.State(), flowspec.Config(), model.IPv4},
		{"flowspec-ipv6.restore", flowspec.State(), flowspec.Config(), model.IPv6},
		{"flowspec-masquerade-all-ipv4.restore", flowspec.State(), masqAll, model.IPv4},
		{"no-cluster-cidr-ipv4.restore", flowspec.State(), proxier.Config{}, model.IPv4},
		{"affinity-ipv4.restore", affinityState(), flowspec.Config(), model.IPv4},
		{"empty.restore", &model.State{}, flowspec.Config(), model.IPv4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Render(tc.s, tc.cfg, tc.fam)
			golden(t, tc.name, got)
			if err := newRuleset().restore(got, true); err != nil {
				t.Errorf("the kernel model refuses the rendered text: %v", err)
			}
		})
	}
}

// affinityState is one ClientIP-affinity Service with two endpoints.
func affinityState() *model.State {
	k := model.ServicePortKey{Namespace: "default", Name: "sticky", Port: "http", Protocol: model.TCP}
	eps := []model.Endpoint{
		{IP: flowspec.Pod1, Port: 8080, Ready: true, Serving: true},
		{IP: flowspec.Pod2, Port: 8080, Ready: true, Serving: true},
	}
	return &model.State{ServiceCIDRs: []netip.Prefix{flowspec.ServiceCIDR}, Services: map[model.ServicePortKey]*model.ServicePort{k: {
		Key: k, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.80")}, Port: 80,
		AffinitySeconds: 10800, Endpoints: eps, ClusterEndpoints: eps,
	}}}
}

// syntheticState has n single-port TCP Services with eps endpoints each,
// ClusterIPs from the ServiceCIDR 10.96.0.0/16 (and fd00:10:96::/112 when
// dual) and endpoints from 10.244.0.0/16.
func syntheticState(n, eps int, dual bool) *model.State {
	s := &model.State{Services: make(map[model.ServicePortKey]*model.ServicePort, n),
		ServiceCIDRs: []netip.Prefix{flowspec.ServiceCIDR, flowspec.ServiceCIDRv6}}
	for i := range n {
		k := model.ServicePortKey{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc%d", i), Port: "http", Protocol: model.TCP}
		vips := []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}
		if dual {
			vips = append(vips, netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 0x96, 14: byte(i >> 8), 15: byte(i)}))
		}
		sp := &model.ServicePort{Key: k, ClusterIPs: vips, Port: 80}
		for j := range eps {
			e := i*eps + j
			sp.Endpoints = append(sp.Endpoints, model.Endpoint{
				IP: netip.AddrFrom4([4]byte{10, 244, byte(e >> 8), byte(e)}), Port: 8080, Ready: true, Serving: true})
		}
		sp.ClusterEndpoints = sp.Endpoints
		s.Services[k] = sp
	}
	return s
}

// countLines counts restore lines by kind: "rules" (-A), "chains" (:) and
// "deletes" (-X).
func countLines(text []byte) (rules, chains, deletes int) {
	for line := range bytes.Lines(text) {
		switch {
		case bytes.HasPrefix(line, []byte("-A ")):
			rules++
		case bytes.HasPrefix(line, []byte(":")):
			chains++
		case bytes.HasPrefix(line, []byte("-X ")):
			deletes++
		}
	}
	return
}

// TestRuleCountIsStable guards the size of the ruleset: a Service port
// with a ClusterIP and n endpoints costs 1 dispatch rule, 1 masquerade
// rule, n choice rules and 2n endpoint rules in n+1 chains (an endpoint
// known to run on another node: its choice rule only), plus 11 base
// rules in 8 chains per family and 1 REJECT per ServiceCIDR. A change here
// changes the kernel's cost for every cluster; update the formula only on
// purpose.
func TestRuleCountIsStable(t *testing.T) {
	for _, tc := range []struct {
		services, eps int
	}{{0, 0}, {1, 1}, {10, 3}, {100, 10}, {1000, 10}} {
		t.Run(fmt.Sprintf("%d services × %d endpoints", tc.services, tc.eps), func(t *testing.T) {
			text := Render(syntheticState(tc.services, tc.eps, false), flowspec.Config(), model.IPv4)
			rules, chains, deletes := countLines(text)
			wantRules := 11 + 1 + tc.services*(1+1+3*tc.eps)
			wantChains := 8 + tc.services*(1+tc.eps)
			if rules != wantRules || chains != wantChains || deletes != 0 {
				t.Errorf("%d rules, %d chains, %d deletes; want %d rules, %d chains, 0 deletes", rules, chains, deletes, wantRules, wantChains)
			}
		})
	}
	t.Run("a service port without endpoints costs one REJECT and no chain", func(t *testing.T) {
		s := syntheticState(3, 0, false)
		rules, chains, _ := countLines(Render(s, flowspec.Config(), model.IPv4))
		if rules != 11+1+3 || chains != 8 {
			t.Errorf("%d rules, %d chains; want 15 rules, 8 chains", rules, chains)
		}
	})
	t.Run("a ClusterIP outside every ServiceCIDR costs one REJECT, shared by its ports", func(t *testing.T) {
		s := syntheticState(3, 1, false)
		s.ServiceCIDRs = nil
		k := model.ServicePortKey{Namespace: "ns1", Name: "svc1", Port: "other", Protocol: model.UDP}
		sp := *s.Services[model.ServicePortKey{Namespace: "ns1", Name: "svc1", Port: "http", Protocol: model.TCP}]
		sp.Key = k
		s.Services[k] = &sp
		rules, _, _ := countLines(Render(s, flowspec.Config(), model.IPv4))
		if want := 11 + 3 + 4*(1+1+3); rules != want {
			t.Errorf("%d rules, want %d", rules, want)
		}
	})
	t.Run("an endpoint on another node costs one rule and no chain", func(t *testing.T) {
		s := syntheticState(100, 10, false)
		for _, sp := range s.Services {
			for i := range sp.Endpoints {
				sp.Endpoints[i].NodeName = "node2"
			}
		}
		s.Node.Name = flowspec.NodeName
		rules, chains, _ := countLines(Render(s, flowspec.Config(), model.IPv4))
		if want := 11 + 1 + 100*(1+1+10); rules != want || chains != 8+100 {
			t.Errorf("%d rules, %d chains; want %d rules, %d chains", rules, chains, want, 8+100)
		}
	})
	t.Run("affinity adds one recent rule per endpoint", func(t *testing.T) {
		rules, chains, _ := countLines(Render(affinityState(), flowspec.Config(), model.IPv4))
		if want := 11 + 1 + 1 + 1 + 2*2 + 2*2; rules != want || chains != 8+3 {
			t.Errorf("%d rules, %d chains; want %d rules, 11 chains", rules, chains, want)
		}
	})
}

func TestRenderFormatsProbabilitiesLikeKubeProxy(t *testing.T) {
	text := string(Render(syntheticState(1, 4, false), flowspec.Config(), model.IPv4))
	for _, want := range []string{"--probability 0.2500000000 ", "--probability 0.3333333333 ", "--probability 0.5000000000 "} {
		if !strings.Contains(text, want) {
			t.Errorf("rendered text lacks %q", want)
		}
	}
	if n := strings.Count(text, "--probability"); n != 3 {
		t.Errorf("%d statistic matches for 4 endpoints, want 3 (the last endpoint has none)", n)
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	s := syntheticState(200, 5, true)
	first := Render(s, flowspec.Config(), model.IPv6)
	for range 5 {
		if got := Render(s, flowspec.Config(), model.IPv6); !bytes.Equal(got, first) {
			t.Fatal("two renders of one State differ")
		}
	}
}

func TestRenderSanitizesComments(t *testing.T) {
	k := model.ServicePortKey{Namespace: `ev"il`, Name: "a\nb", Port: `p\`, Protocol: model.UDP}
	eps := []model.Endpoint{{IP: flowspec.Pod1, Port: 53, Ready: true}}
	s := &model.State{Services: map[model.ServicePortKey]*model.ServicePort{k: {
		Key: k, ClusterIPs: []netip.Addr{flowspec.DNSVIP}, Port: 53, Endpoints: eps, ClusterEndpoints: eps}}}
	text := Render(s, flowspec.Config(), model.IPv4)
	if err := newRuleset().restore(text, true); err != nil {
		t.Fatalf("hostile names break the restore text: %v\n%s", err, text)
	}
	if !bytes.Contains(text, []byte(`"ev_il/a_b:p_ cluster IP"`)) {
		t.Errorf("comment not sanitised:\n%s", text)
	}
}
