package iptables

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

var (
	webKey   = model.ServicePortKey{Namespace: "default", Name: "web", Port: "p", Protocol: model.TCP}
	dnsKey   = model.ServicePortKey{Namespace: "default", Name: "dns", Port: "p", Protocol: model.UDP}
	emptyKey = model.ServicePortKey{Namespace: "default", Name: "empty", Port: "p", Protocol: model.TCP}
)

// withPort returns a copy of s in which k's service port is changed by
// mod (added when missing if mod is given a zero port), or removed when
// mod is nil. s itself is not changed: States are immutable.
func withPort(s *model.State, k model.ServicePortKey, mod func(*model.ServicePort)) *model.State {
	out := &model.State{Node: s.Node, Services: maps.Clone(s.Services), ServiceCIDRs: s.ServiceCIDRs}
	if out.Services == nil {
		out.Services = map[model.ServicePortKey]*model.ServicePort{}
	}
	if mod == nil {
		delete(out.Services, k)
		return out
	}
	sp := &model.ServicePort{Key: k}
	if old, ok := s.Services[k]; ok {
		c := *old
		sp = &c
		sp.ClusterIPs = slices.Clone(old.ClusterIPs)
		sp.Endpoints = slices.Clone(old.Endpoints)
		sp.ClusterEndpoints = slices.Clone(old.ClusterEndpoints)
		sp.ExternalIPs = slices.Clone(old.ExternalIPs)
		sp.ExternalEndpoints = slices.Clone(old.ExternalEndpoints)
	}
	mod(sp)
	out.Services[k] = sp
	return out
}

// selectExternal sets sp's ExternalEndpoints as the model would, taking
// the endpoints whose address ends in an even byte as this node's.
func selectExternal(sp *model.ServicePort) {
	switch {
	case !sp.HasExternal():
		sp.ExternalEndpoints = nil
	case !sp.ExternalLocal:
		sp.ExternalEndpoints = sp.ClusterEndpoints
	default:
		sp.ExternalEndpoints = nil
		for _, e := range sp.Endpoints {
			if b := e.IP.As16(); b[15]%2 == 0 {
				sp.ExternalEndpoints = append(sp.ExternalEndpoints, e)
			}
		}
	}
}

// endpoint is a ready endpoint on another node, as the spec's are but
// Pod1 of web (see localEndpoint).
func endpoint(ip netip.Addr) model.Endpoint {
	return model.Endpoint{IP: ip, Port: flowspec.EchoPort, Ready: true, Serving: true, NodeName: "node2"}
}

// localEndpoint is a ready endpoint on the spec's node.
func localEndpoint(ip netip.Addr) model.Endpoint {
	e := endpoint(ip)
	e.NodeName = flowspec.NodeName
	return e
}

func setEndpoints(eps ...model.Endpoint) func(*model.ServicePort) {
	return func(sp *model.ServicePort) {
		sp.Endpoints, sp.ClusterEndpoints = eps, eps
		selectExternal(sp)
	}
}

// restoreSummary is what one restore input does, per table.
type restoreSummary struct {
	Declared map[string][]string // chain lines (create or flush), sorted
	Deleted  map[string][]string // -X, sorted
}

func summarize(t *testing.T, text string) restoreSummary {
	t.Helper()
	blocks, err := parseRestore([]byte(text))
	if err != nil {
		t.Fatalf("parse the written text: %v", err)
	}
	s := restoreSummary{Declared: map[string][]string{}, Deleted: map[string][]string{}}
	for _, b := range blocks {
		for _, o := range b.ops {
			switch o.kind {
			case opChain:
				s.Declared[b.name] = append(s.Declared[b.name], o.chain)
			case opDelX:
				s.Deleted[b.name] = append(s.Deleted[b.name], o.chain)
			}
		}
		slices.Sort(s.Declared[b.name])
		slices.Sort(s.Deleted[b.name])
	}
	return s
}

func sorted(names ...string) []string { return slices.Sorted(slices.Values(names)) }

func sepOf(k model.ServicePortKey, ip netip.Addr) string { return sepChain(k, endpoint(ip)) }

func TestFirstSyncIsFullAndSatisfiesTheFlowSpec(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	st := tp.sync(t, flowspec.State())
	if !st.Full || st.Skipped {
		t.Errorf("first sync stats %+v, want a full write", st)
	}
	v4, v6 := tp.kernels[model.IPv4], tp.kernels[model.IPv6]
	if len(v4.writes) != 1 || len(v6.writes) != 1 {
		t.Errorf("%d IPv4 and %d IPv6 restores, want one each", len(v4.writes), len(v6.writes))
	}
	tr, err := NewTracer(v4.saveAll(), v6.saveAll())
	if err != nil {
		t.Fatal(err)
	}
	flowspec.Run(t, tr)
	flowspec.RunExternal(t, tr)
	flowspec.RunAffinity(t, tr)
	tp.wantStatsMatchKernel(t)
}

// wantStatsMatchKernel checks that the last sync's rule and chain counts
// are what the kernels hold in proxyd's chains.
func (tp *testProxier) wantStatsMatchKernel(t *testing.T) {
	t.Helper()
	if msg := tp.statsMismatch(); msg != "" {
		t.Error(msg)
	}
}

// statsMismatch says how the last sync's rule and chain counts differ from
// what the kernels hold in proxyd's chains; "" when they agree.
func (tp *testProxier) statsMismatch() string {
	rules, chains := 0, 0
	for _, k := range tp.kernels {
		for _, table := range []string{tableNAT, tableFilter} {
			for _, c := range k.proxydChains(table) {
				rules += len(k.tables[table].chains[c].rules)
				chains++
			}
		}
	}
	if st := tp.LastSyncStats(); rules != st.RuleCount || chains != st.ChainCount {
		return fmt.Sprintf("stats say %d rules in %d chains, the tables hold %d in %d", st.RuleCount, st.ChainCount, rules, chains)
	}
	return ""
}

// TestPartialSyncOfExternalChanges checks which chains external changes
// rewrite, and that the result is what a full write gives.
func TestPartialSyncOfExternalChanges(t *testing.T) {
	cfg := flowspec.Config()
	base := flowspec.State()
	npremote := model.ServicePortKey{Namespace: "default", Name: "npremote", Port: "p", Protocol: model.TCP}
	np := model.ServicePortKey{Namespace: "default", Name: "np", Port: "p", Protocol: model.TCP}
	ranged := model.ServicePortKey{Namespace: "default", Name: "ranged", Port: "p", Protocol: model.TCP}
	outside := netip.PrefixFrom(flowspec.OutsideClient, 32)
	local := model.Endpoint{IP: flowspec.Pod1, Port: flowspec.EchoPort, Ready: true, Serving: true, NodeName: flowspec.NodeName}
	none := map[string][]string{}
	gainsLocal := withPort(base, npremote, func(sp *model.ServicePort) {
		sp.Endpoints = append([]model.Endpoint{local}, sp.Endpoints...)
		sp.ExternalEndpoints = []model.Endpoint{local}
	})
	noExternalIP := withPort(withPort(gainsLocal, webKey, func(sp *model.ServicePort) { sp.NodePort = 30090; selectExternal(sp) }),
		np, func(sp *model.ServicePort) { sp.ExternalIPs = nil })
	steps := []struct {
		name  string
		state *model.State
		want  restoreSummary
	}{
		{"a Local-policy port gaining a local endpoint rewrites its external chain and stops dropping",
			gainsLocal,
			restoreSummary{Declared: map[string][]string{"nat": sorted(extChain(npremote), svlChain(npremote), sepOf(npremote, flowspec.Pod1)),
				"filter": {ChainExternalServices}}, Deleted: none}},
		{"a new NodePort rewrites PROXYD-NODEPORTS and adds the external chain, nothing else",
			withPort(gainsLocal, webKey, func(sp *model.ServicePort) { sp.NodePort = 30090; selectExternal(sp) }),
			restoreSummary{Declared: map[string][]string{"nat": sorted(extChain(webKey), ChainNodePorts)}, Deleted: none}},
		{"a removed external IP rewrites nat's PROXYD-SERVICES only",
			noExternalIP,
			restoreSummary{Declared: map[string][]string{"nat": {ChainServices}}, Deleted: none}},
		{"widened loadBalancerSourceRanges rewrite the firewall chain only",
			withPort(noExternalIP, ranged, func(sp *model.ServicePort) { sp.SourceRanges = append(sp.SourceRanges, outside) }),
			restoreSummary{Declared: map[string][]string{"nat": {fwChain(ranged)}}, Deleted: none}},
		{"no loadBalancerSourceRanges: the load-balancer IP goes straight to the external chain",
			withPort(noExternalIP, ranged, func(sp *model.ServicePort) { sp.SourceRanges = nil }),
			restoreSummary{Declared: map[string][]string{"nat": sorted(ChainServices, fwChain(ranged))},
				Deleted: map[string][]string{"nat": {fwChain(ranged)}}}},
		{"back to the first State",
			base,
			restoreSummary{Declared: map[string][]string{
				"nat": sorted(ChainServices, ChainNodePorts, extChain(webKey),
					extChain(npremote), svlChain(npremote), sepOf(npremote, flowspec.Pod1), fwChain(ranged)),
				"filter": {ChainExternalServices}},
				Deleted: map[string][]string{"nat": sorted(extChain(webKey), svlChain(npremote), sepOf(npremote, flowspec.Pod1))}}},
	}
	tp := newTestProxier(t, cfg)
	tp.sync(t, base)
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			if st := tp.sync(t, step.state); st.Full {
				t.Errorf("sync was full")
			}
			got := summarize(t, tp.kernels[model.IPv4].lastWrite())
			if diff := cmp.Diff(step.want, got); diff != "" {
				t.Errorf("IPv4 restore input (-want +got):\n%s\n%s", diff, tp.kernels[model.IPv4].lastWrite())
			}
			tp.wantKernelMatchesFullWrite(t, cfg, step.state)
			tp.wantStatsMatchKernel(t)
		})
	}
	tr, err := NewTracer(tp.kernels[model.IPv4].saveAll(), tp.kernels[model.IPv6].saveAll())
	if err != nil {
		t.Fatal(err)
	}
	flowspec.RunExternal(t, tr)
}

func TestJumpRulesAreInsertedOnceAtTheTop(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	k := tp.kernels[model.IPv4]
	foreign := []string{"-s", "192.0.2.1/32", "-j", "ACCEPT"}
	for _, chain := range []string{"PREROUTING", "OUTPUT", "POSTROUTING"} {
		if err := k.Insert(tableNAT, chain, 1, foreign...); err != nil {
			t.Fatal(err)
		}
	}
	tp.sync(t, flowspec.State())
	tp.RequestFullSync()
	tp.sync(t, flowspec.State())
	for _, j := range jumpRules {
		rules := k.tables[j.table].chains[j.chain].rules
		n, first := 0, -1
		for i, r := range rules {
			if slices.Equal(r, j.spec) {
				n++
				first = i
			}
		}
		// proxyd's jumps in this chain are its first rules, in any order.
		top := 0
		for _, o := range jumpRules {
			if o.table == j.table && o.chain == j.chain {
				top++
			}
		}
		if n != 1 || first >= top {
			t.Errorf("%s %s: %d copies of the jump, at %d; want exactly one, among the first %d rules", j.table, j.chain, n, first, top)
		}
		if j.table == tableNAT && !slices.ContainsFunc(rules, func(r []string) bool { return slices.Equal(r, foreign) }) {
			t.Errorf("%s %s: the foreign rule is gone", j.table, j.chain)
		}
	}
}

func TestUnchangedStateWritesNothing(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	tp.sync(t, flowspec.State())
	st := tp.sync(t, flowspec.State()) // a new Build: equal, not identical
	if st.Full || !st.Skipped || st.KernelOps != 0 {
		t.Errorf("stats %+v, want a skipped partial sync", st)
	}
	for fam, k := range tp.kernels {
		if len(k.writes) != 1 {
			t.Errorf("%v: %d restores, want only the first", fam, len(k.writes))
		}
	}
}

// TestPartialSyncWritesOnlyWhatChanged drives one Proxier through a
// sequence of States and checks, after each, exactly which chains the
// restore input named and that the tables equal a fresh full write.
func TestPartialSyncWritesOnlyWhatChanged(t *testing.T) {
	cfg := flowspec.Config()
	base := flowspec.State()
	pod4 := netip.MustParseAddr("10.244.1.14")
	webSVC, dnsSVC := svcChain(webKey), svcChain(dnsKey)
	none := map[string][]string{}

	steps := []struct {
		name  string
		state *model.State
		v4    *restoreSummary // nil: no IPv4 restore at all
		v6    *restoreSummary
	}{
		{
			name:  "a local endpoint added to web rewrites web's chain and adds the endpoint's chain",
			state: withPort(base, webKey, setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod2), endpoint(flowspec.Pod3), localEndpoint(pod4), endpoint(flowspec.Pod1v6), endpoint(flowspec.Pod2v6))),
			v4:    &restoreSummary{Declared: map[string][]string{"nat": sorted(webSVC, sepOf(webKey, pod4))}, Deleted: none},
		},
		{
			name:  "a local and a remote endpoint removed from web rewrite web's chain and delete the local one's chain",
			state: withPort(base, webKey, setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod3), endpoint(flowspec.Pod1v6), endpoint(flowspec.Pod2v6))),
			v4: &restoreSummary{Declared: map[string][]string{"nat": sorted(webSVC, sepOf(webKey, pod4))},
				Deleted: map[string][]string{"nat": {sepOf(webKey, pod4)}}},
		},
		{
			name:  "an IPv6 endpoint change touches only the IPv6 tables",
			state: withPort(base, webKey, setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod3), endpoint(flowspec.Pod1v6))),
			v6:    &restoreSummary{Declared: map[string][]string{"nat": {webSVC}}, Deleted: none},
		},
		{
			name: "a Service losing its last endpoint rewrites both dispatch chains and deletes its chain",
			state: withPort(withPort(base, webKey, setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod3), endpoint(flowspec.Pod1v6))),
				dnsKey, setEndpoints()),
			v4: &restoreSummary{
				Declared: map[string][]string{"nat": sorted(ChainServices, dnsSVC), "filter": {ChainServices}},
				Deleted:  map[string][]string{"nat": {dnsSVC}}},
		},
		{
			name: "a Service removed while it rejects rewrites only filter's dispatch chain",
			state: withPort(withPort(withPort(base, webKey, setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod3), endpoint(flowspec.Pod1v6))),
				dnsKey, setEndpoints()), emptyKey, nil),
			v4: &restoreSummary{Declared: map[string][]string{"filter": {ChainServices}}, Deleted: none},
		},
		{
			name:  "back to the first State",
			state: base,
			v4: &restoreSummary{
				Declared: map[string][]string{"nat": sorted(ChainServices, webSVC, dnsSVC), "filter": {ChainServices}},
				Deleted:  none},
			v6: &restoreSummary{Declared: map[string][]string{"nat": {webSVC}}, Deleted: none},
		},
	}

	tp := newTestProxier(t, cfg)
	tp.sync(t, base)
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			before := map[model.IPFamily]int{}
			for fam, k := range tp.kernels {
				before[fam] = len(k.writes)
			}
			if st := tp.sync(t, step.state); st.Full {
				t.Errorf("sync was full")
			}
			for fam, want := range map[model.IPFamily]*restoreSummary{model.IPv4: step.v4, model.IPv6: step.v6} {
				k := tp.kernels[fam]
				if want == nil {
					if len(k.writes) != before[fam] {
						t.Errorf("%v: unexpected restore:\n%s", fam, k.lastWrite())
					}
					continue
				}
				if len(k.writes) != before[fam]+1 {
					t.Errorf("%v: %d restores, want one", fam, len(k.writes)-before[fam])
					continue
				}
				got := summarize(t, k.lastWrite())
				if diff := cmp.Diff(*want, got); diff != "" {
					t.Errorf("%v restore input (-want +got):\n%s\n%s", fam, diff, k.lastWrite())
				}
			}
			tp.wantKernelMatchesFullWrite(t, cfg, step.state)
		})
	}
}

func TestPartialSyncIgnoresEndpointsThatWereNotSelected(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	tp.sync(t, flowspec.State())
	s := withPort(flowspec.State(), webKey, func(sp *model.ServicePort) {
		sp.Endpoints = append(sp.Endpoints, model.Endpoint{IP: netip.MustParseAddr("10.244.1.99"), Port: 8080})
	})
	if st := tp.sync(t, s); !st.Skipped {
		t.Errorf("a not-ready endpoint that is not used rewrote rules: %+v\n%s", st, tp.kernels[model.IPv4].lastWrite())
	}
}

func TestAFailedWriteKeepsTheOldRulesAndTheNextSyncIsFull(t *testing.T) {
	cfg := flowspec.Config()
	tp := newTestProxier(t, cfg)
	tp.sync(t, flowspec.State())
	k := tp.kernels[model.IPv4]
	before := k.canonical()
	next := withPort(flowspec.State(), webKey, setEndpoints(localEndpoint(flowspec.Pod1)))
	k.failRestores = 1
	if err := tp.Sync(context.Background(), next, model.Diff{}); err == nil || !strings.Contains(err.Error(), "sync IPv4 iptables rules") {
		t.Fatalf("Sync error %v, want the injected failure wrapped", err)
	}
	if k.canonical() != before {
		t.Error("a failed restore changed the tables")
	}
	if st := tp.sync(t, next); !st.Full {
		t.Errorf("the sync after an error was not full: %+v", st)
	}
	tp.wantKernelMatchesFullWrite(t, cfg, next)
}

func TestFullSyncDeletesStaleProxydChainsAndNothingElse(t *testing.T) {
	cfg := flowspec.Config()
	tp := newTestProxier(t, cfg)
	k := tp.kernels[model.IPv4]
	leftover := "*nat\n:PROXYD-SERVICES - [0:0]\n:PROXYD-SVC-OLDOLDOLDOLDOLD0 - [0:0]\n:PROXYD-SEP-OLDOLDOLDOLDOLD0 - [0:0]\n:KUBE-SVC-FOREIGN - [0:0]\n" +
		"-A PROXYD-SERVICES -d 10.96.9.9/32 -p tcp -m tcp --dport 80 -j PROXYD-SVC-OLDOLDOLDOLDOLD0\n" +
		"-A PROXYD-SVC-OLDOLDOLDOLDOLD0 -j PROXYD-SEP-OLDOLDOLDOLDOLD0\n-A PROXYD-SEP-OLDOLDOLDOLDOLD0 -p tcp -j DNAT --to-destination 10.9.9.9:80\n" +
		"-A KUBE-SVC-FOREIGN -j RETURN\n-A PREROUTING -j KUBE-SVC-FOREIGN\n-A PREROUTING -m comment --comment \"proxyd service portals\" -j PROXYD-SERVICES\nCOMMIT\n" +
		"*filter\n:PROXYD-SERVICES - [0:0]\n:PROXYD-OLD-FILTER - [0:0]\n-A PROXYD-OLD-FILTER -j ACCEPT\nCOMMIT\n"
	if err := k.Restore(context.Background(), []byte(leftover)); err != nil {
		t.Fatal(err)
	}
	tp.sync(t, flowspec.State())
	for _, table := range []string{tableNAT, tableFilter} {
		for _, c := range k.proxydChains(table) {
			if strings.Contains(c, "OLD") {
				t.Errorf("stale chain %s %s survived the full sync", table, c)
			}
		}
	}
	if c, ok := k.tables[tableNAT].chains["KUBE-SVC-FOREIGN"]; !ok || len(c.rules) != 1 {
		t.Error("the foreign chain was touched")
	}
	if got := len(k.tables[tableNAT].chains["PREROUTING"].rules); got != 2 {
		t.Errorf("PREROUTING has %d rules, want the foreign one and one proxyd jump", got)
	}
}

func TestFullSyncHappensOnRequest(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	tp.sync(t, flowspec.State())
	if st := tp.sync(t, flowspec.State()); st.Full {
		t.Error("a second sync of the same State was full")
	}
	tp.RequestFullSync()
	if st := tp.sync(t, flowspec.State()); !st.Full {
		t.Error("RequestFullSync did not make the next sync full")
	}
}

func TestServiceCIDRChangesRewriteOnlyFiltersDispatch(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	tp.sync(t, flowspec.State())
	s := withPort(flowspec.State(), webKey, func(*model.ServicePort) {})
	s.ServiceCIDRs = []netip.Prefix{flowspec.ServiceCIDR, netip.MustParsePrefix("10.97.0.0/16"), flowspec.ServiceCIDRv6}
	tp.sync(t, s)
	if got := summarize(t, tp.kernels[model.IPv4].lastWrite()); !cmp.Equal(got, restoreSummary{
		Declared: map[string][]string{"filter": {ChainServices}}, Deleted: map[string][]string{}}) {
		t.Errorf("a new IPv4 ServiceCIDR wrote %+v, want only filter's %s", got, ChainServices)
	}
	if n := len(tp.kernels[model.IPv6].writes); n != 1 {
		t.Errorf("an IPv4 ServiceCIDR change restored IPv6 rules")
	}
	tp.wantKernelMatchesFullWrite(t, flowspec.Config(), s)

	// Without ServiceCIDRs every ClusterIP refuses its other ports itself.
	s = withPort(s, webKey, func(*model.ServicePort) {})
	s.ServiceCIDRs = nil
	tp.sync(t, s)
	tr, err := NewTracer(tp.kernels[model.IPv4].saveAll(), tp.kernels[model.IPv6].saveAll())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []flowspec.Packet{
		{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 81), Proto: model.TCP},
		{Src: flowspec.Clientv6, Dst: netip.AddrPortFrom(flowspec.WebVIPv6, 81), Proto: model.TCP},
	} {
		if r := tr.Trace(p, func(uint32) uint32 { return 0 }); r.Verdict != flowspec.Reject {
			t.Errorf("without ServiceCIDRs %v gives %v, want reject", p.Dst, r.Verdict)
		}
	}
	if r := tr.Trace(flowspec.Packet{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.HeadlessLikeIP, 80), Proto: model.TCP}, func(uint32) uint32 { return 0 }); r.Verdict != flowspec.Untouched {
		t.Errorf("without ServiceCIDRs an unknown address gives %v, want untouched", r.Verdict)
	}
	tp.wantKernelMatchesFullWrite(t, flowspec.Config(), s)
}

func TestFamilyWithoutServicePortsKeepsItsBaseChains(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	v4only := withPort(flowspec.State(), webKey, func(sp *model.ServicePort) { sp.ClusterIPs = sp.ClusterIPs[:1] })
	tp.sync(t, v4only)
	k := tp.kernels[model.IPv6]
	want := []string{ChainMarkDrop, ChainMarkMasq, ChainNodePorts, ChainPostrouting, ChainServices}
	if got := k.proxydChains(tableNAT); !slices.Equal(got, want) {
		t.Errorf("IPv6 nat chains %v, want %v", got, want)
	}
	for _, j := range jumpRules {
		if ok, _ := k.Exists(j.table, j.chain, j.spec...); !ok {
			t.Errorf("IPv6 %s %s lacks its jump", j.table, j.chain)
		}
	}
}

func TestCleanupRemovesExactlyWhatProxydOwns(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	ctx := context.Background()
	if err := tp.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup with nothing there: %v", err)
	}
	k := tp.kernels[model.IPv4]
	foreign := "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n*filter\n-A INPUT -s 192.0.2.0/24 -j DROP\nCOMMIT\n"
	if err := k.Restore(ctx, []byte(foreign)); err != nil {
		t.Fatal(err)
	}
	before := k.canonical()
	tp.sync(t, flowspec.State())
	// A second copy of a jump, as a racing second proxy could leave.
	if err := k.Insert(tableNAT, "OUTPUT", 1, jumpRules[1].spec...); err != nil {
		t.Fatal(err)
	}
	if err := tp.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if after := k.canonical(); after != before {
		t.Errorf("after Cleanup the tables are\n%s\nwant what was there before proxyd\n%s", after, before)
	}
	if len(tp.kernels[model.IPv6].proxydChains(tableNAT)) != 0 {
		t.Error("IPv6 chains survived Cleanup")
	}
	if err := tp.Cleanup(ctx); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	if st := tp.sync(t, flowspec.State()); !st.Full {
		t.Error("the sync after Cleanup was not full")
	}
}

func TestAServicePortTheModelShouldNeverBuildDoesNotBlockTheOthers(t *testing.T) {
	s := flowspec.State()
	for _, mod := range []func(*model.ServicePort){
		func(sp *model.ServicePort) {
			sp.Key.Protocol = "BOGUS"
			sp.ClusterIPs, sp.Port = []netip.Addr{flowspec.HeadlessLikeIP}, 7
		},
		func(sp *model.ServicePort) { sp.ClusterIPs, sp.Port = []netip.Addr{flowspec.HeadlessLikeIP}, 0 },
	} {
		sp := &model.ServicePort{Key: model.ServicePortKey{Namespace: "x", Name: "y", Protocol: model.TCP}}
		mod(sp)
		setEndpoints(localEndpoint(flowspec.Pod1))(sp)
		s = withPort(s, sp.Key, func(p *model.ServicePort) { *p = *sp })
	}
	tp := newTestProxier(t, proxier.Config{})
	tp.sync(t, s)
	tp.sync(t, flowspec.State())
	tp.sync(t, s)
}

// TestPartialSyncGolden documents the shape of an incremental write: web
// loses an endpoint and dns its last one, in one sync.
func TestPartialSyncGolden(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	tp.sync(t, flowspec.State())
	next := withPort(withPort(flowspec.State(), webKey,
		setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod3), endpoint(flowspec.Pod1v6), endpoint(flowspec.Pod2v6))),
		dnsKey, setEndpoints())
	tp.sync(t, next)
	golden(t, "partial-ipv4.restore", []byte(tp.kernels[model.IPv4].lastWrite()))
}
