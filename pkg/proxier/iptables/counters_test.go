package iptables

import (
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// The counted rules as iptables-save prints them (libxt_nfacct puts two
// spaces before the name).
var (
	countedLocalhostRE = regexp.MustCompile(`(?m)^-A PROXYD-NODEPORTS -d 127\.0\.0\.0/8 -p tcp -m comment --comment "?default/np:p"? -m tcp --dport 30080 -m nfacct --nfacct-name\s+localhost_nps_accepted_pkts -j PROXYD-EXT-\S+$`)
	countedInvalidRE   = regexp.MustCompile(`(?m)^-A PROXYD-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name\s+ct_state_invalid_dropped_pkts -j DROP$`)
)

func TestCountersAreBumpedFromTheRulesKubeProxyCountsWith(t *testing.T) {
	cfg := flowspec.Config()
	cfg.LocalhostNodePorts = true
	loopback := netip.MustParseAddr("127.0.0.1")
	toLocalhost := flowspec.Packet{Src: loopback, Dst: netip.AddrPortFrom(loopback, 30080), Proto: model.TCP, FromNode: true}
	rnd := func(uint32) uint32 { return 0 }

	t.Run("with the counters, a NodePort on 127.0.0.1 and an INVALID drop name them, and traffic is unchanged", func(t *testing.T) {
		tp := newTestProxier(t, cfg)
		tp.ensure = tp.acct.ensure
		tp.sync(t, flowspec.State())
		if !tp.acct[CounterLocalhostNodePorts] || !tp.acct[CounterInvalidDropped] {
			t.Fatalf("counters %v, want both created", tp.acct)
		}
		v4, v6 := string(tp.kernels[model.IPv4].saveAll()), string(tp.kernels[model.IPv6].saveAll())
		if !countedLocalhostRE.MatchString(v4) || !countedInvalidRE.MatchString(v4) {
			t.Errorf("IPv4 lacks a counted rule:\n%s", v4)
		}
		if !countedInvalidRE.MatchString(v6) || strings.Contains(v6, CounterLocalhostNodePorts) {
			t.Errorf("IPv6 must count INVALID drops and never localhost NodePorts:\n%s", v6)
		}
		if got := tp.Counters(); got != (Counters{LocalhostNodePorts: true, InvalidDropped: true}) {
			t.Errorf("Counters() = %+v", got)
		}
		tr, err := NewTracer([]byte(v4), []byte(v6))
		if err != nil {
			t.Fatal(err)
		}
		if r := tr.Trace(toLocalhost, rnd); r.Verdict != flowspec.DNAT || !r.Masquerade {
			t.Errorf("127.0.0.1:30080 gives %+v, want DNAT, masqueraded", r)
		}
		flowspec.Run(t, tr)
		flowspec.RunExternal(t, tr)
		saved := strings.ReplaceAll(v4, "--nfacct-name ", "--nfacct-name  ")
		if d, err := Drift([]byte(saved), RenderCounting(flowspec.State(), cfg, model.IPv4, tp.Counters())); err != nil || len(d) != 0 {
			t.Errorf("Drift of the counted rules as iptables-save prints them: %v, %v; want none", d, err)
		}
		if d, _ := Drift([]byte(saved), Render(flowspec.State(), cfg, model.IPv4)); len(d) == 0 {
			t.Error("Drift finds nothing between counted rules and uncounted ones")
		}
		if r := string(RenderCounting(flowspec.State(), cfg, model.IPv4, tp.Counters())); !countedLocalhostRE.MatchString(r) || !countedInvalidRE.MatchString(r) {
			t.Errorf("RenderCounting lacks a counted rule:\n%s", r)
		}
	})

	t.Run("without nfacct in the kernel, the sync succeeds and no rule names a counter", func(t *testing.T) {
		tp := newTestProxier(t, cfg)
		tp.ensure = func(string) error { return errors.New("nfacct: protocol not supported") }
		tp.sync(t, flowspec.State())
		for fam, k := range tp.kernels {
			if dump := string(k.saveAll()); strings.Contains(dump, "nfacct") {
				t.Errorf("%v names a counter:\n%s", fam, dump)
			}
		}
		if got := tp.Counters(); got != (Counters{}) {
			t.Errorf("Counters() = %+v, want none", got)
		}
	})

	t.Run("counters gone after a reload are created again by the repairing full write", func(t *testing.T) {
		tp := newTestProxier(t, cfg)
		tp.ensure = tp.acct.ensure
		tp.sync(t, flowspec.State())
		for _, k := range tp.kernels {
			k.ruleset = newRuleset()
			k.ruleset.counters = tp.acct.has
			k.gen++
		}
		clear(tp.acct)
		tp.sync(t, flowspec.State())
		if st := tp.LastSyncStats(); st.DriftRepairs == 0 {
			t.Errorf("stats %+v, want a repair", st)
		}
		if v4 := string(tp.kernels[model.IPv4].saveAll()); !countedLocalhostRE.MatchString(v4) || !tp.acct[CounterLocalhostNodePorts] {
			t.Errorf("after the repair the localhost NodePort is not counted (counters %v):\n%s", tp.acct, v4)
		}
	})
}
