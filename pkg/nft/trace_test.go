package nft

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var (
	nodeIP   = netip.MustParseAddr("10.88.0.2")
	clientIP = netip.MustParseAddr("10.244.1.100")
	vip      = netip.MustParseAddrPort("10.96.0.10:80")
	pod1     = netip.MustParseAddrPort("10.244.1.11:8080")
	pod2     = netip.MustParseAddrPort("10.244.1.12:8080")
	pod3     = netip.MustParseAddrPort("10.244.1.13:8080")
)

func isNode(a netip.Addr) bool { return a == nodeIP || a.IsLoopback() }

// natTable DNATs vip to pod1 in prerouting and output, and rejects new
// connections still addressed to vip in a filter chain of output at
// rejectPrio.
func natTable(rejectPrio int32) *Table {
	dnat := Rule{DPort{Proto: 6, Port: 80}, AddrIn{Field: IPDaddr, Prefix: netip.PrefixFrom(vip.Addr(), 32)}, DNAT{To: pod1}}
	return &Table{Family: IP, Name: "t", Chains: []*Chain{
		// Named so that name order would run the reject first.
		{Name: "a-reject", Base: &Base{Type: Filter, Hook: Output, Priority: rejectPrio}, Rules: []Rule{
			{CtState{Bits: CtNew}, AddrIn{Field: IPDaddr, Prefix: netip.PrefixFrom(vip.Addr(), 32)}, Reject{}},
		}},
		{Name: "b-nat-output", Base: &Base{Type: NAT, Hook: Output, Priority: -100}, Rules: []Rule{dnat}},
		{Name: "c-nat-prerouting", Base: &Base{Type: NAT, Hook: Prerouting, Priority: -100}, Rules: []Rule{dnat}},
	}}
}

func trace(t *testing.T, tr *Tracer, p Packet) Result {
	t.Helper()
	r, err := tr.Trace(p, func(uint32) uint32 { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTracerOrdersBaseChainsByPriority(t *testing.T) {
	fromNode := Packet{Src: nodeIP, Dst: vip, Proto: 6, FromNode: true}
	if r := trace(t, NewTracer(isNode, []*Table{natTable(-90)}), fromNode); r.Fate != Accepted || r.Packet.Dst != pod1 || !r.DNAT {
		t.Errorf("reject after DNAT: %+v, want DNAT to %v", r, pod1)
	}
	if r := trace(t, NewTracer(isNode, []*Table{natTable(-110)}), fromNode); r.Fate != Rejected {
		t.Errorf("reject before DNAT: %+v, want rejected", r)
	}
}

func TestTracerRunsNATChainsInTheKernelsNATHook(t *testing.T) {
	// A NAT chain of priority -200 still runs at -100, after a filter
	// chain of -110 that sees the original destination.
	tb := natTable(-110)
	tb.Chains[1].Base.Priority = -200
	if r := trace(t, NewTracer(isNode, []*Table{tb}), Packet{Src: nodeIP, Dst: vip, Proto: 6, FromNode: true}); r.Fate != Rejected {
		t.Errorf("%+v, want rejected before the NAT hook", r)
	}
	// Only the first NAT chain that binds the connection runs.
	second := &Table{Family: INet, Name: "second", Chains: []*Chain{
		{Name: "nat", Base: &Base{Type: NAT, Hook: Prerouting, Priority: -99}, Rules: []Rule{{Proto{Proto: 6}, DNAT{To: pod2}}}},
	}}
	r := trace(t, NewTracer(isNode, []*Table{second, natTable(-90)}), Packet{Src: clientIP, Dst: vip, Proto: 6})
	if r.Packet.Dst != pod1 {
		t.Errorf("DNAT to %v, want %v by the NAT chain of lower priority", r.Packet.Dst, pod1)
	}
}

func TestTracerSendsLocalTrafficBackOverLoopback(t *testing.T) {
	tb := &Table{Family: IP, Name: "t", Chains: []*Chain{
		{Name: "in", Base: &Base{Type: Filter, Hook: Input, Priority: 0}, Rules: []Rule{{DPort{Proto: 6, Port: 30000}, Reject{}}}},
		{Name: "fw", Base: &Base{Type: Filter, Hook: Forward, Priority: 0}, Rules: []Rule{{Drop}}},
	}}
	tr := NewTracer(isNode, []*Table{tb})
	for _, p := range []Packet{
		{Src: nodeIP, Dst: netip.AddrPortFrom(nodeIP, 30000), Proto: 6, FromNode: true},
		{Src: clientIP, Dst: netip.AddrPortFrom(nodeIP, 30000), Proto: 6},
	} {
		if r := trace(t, tr, p); r.Fate != Rejected || len(r.Path) != 1 || r.Path[0].Hook != Input {
			t.Errorf("%+v: %+v, want rejected in input", p, r)
		}
	}
	if r := trace(t, tr, Packet{Src: clientIP, Dst: pod1, Proto: 6}); r.Fate != Dropped {
		t.Errorf("forwarded: %+v, want dropped in forward", r)
	}
}

func TestTracerRunsPostroutingNATForForwardedPackets(t *testing.T) {
	tb := natTable(-90)
	tb.Chains = append(tb.Chains,
		&Chain{Name: "fw", Base: &Base{Type: Filter, Hook: Forward, Priority: 0}, Rules: []Rule{{CtStatus{Bits: CtDNAT}, Accept}}},
		&Chain{Name: "post", Base: &Base{Type: NAT, Hook: Postrouting, Priority: 100}, Rules: []Rule{{CtStatus{Bits: CtDNAT}, Masquerade{}}}})
	r := trace(t, NewTracer(isNode, []*Table{tb}), Packet{Src: clientIP, Dst: vip, Proto: 6})
	if r.Fate != Accepted || r.Packet.Dst != pod1 || !r.Masquerade {
		t.Errorf("%+v, want DNAT to %v and masquerade in postrouting", r, pod1)
	}
}

// A pseudo-chain that steals the packet after rewriting it sends it on
// through output and postrouting, where a mark set before it decides the
// masquerade.
func TestTracerRunsPseudoChainsAtTheirPriority(t *testing.T) {
	tb := &Table{Family: INet, Name: "t", Chains: []*Chain{
		{Name: "mark", Base: &Base{Type: NAT, Hook: Prerouting, Priority: -100}, Rules: []Rule{{SetMark{Op: MarkOr, Value: 0x4000}}}},
		{Name: "late", Base: &Base{Type: Filter, Hook: Input, Priority: 110}, Rules: []Rule{{Reject{}}}},
		{Name: "post", Base: &Base{Type: NAT, Hook: Postrouting, Priority: 100}, Rules: []Rule{{Mark{Mask: 0x4000, Value: 0x4000}, Masquerade{}}}},
	}}
	runs := 0
	ipvs := Pseudo{Name: "ipvs", Hook: Input, Priority: 99, Run: func(fl *Flow) (bool, error) {
		runs++
		fl.Redirect(pod2)
		fl.Note("ipvs", "scheduled %s", pod2)
		return true, nil
	}}
	local := func(a netip.Addr) bool { return isNode(a) || a == vip.Addr() }
	r := trace(t, NewTracer(local, []*Table{tb}, ipvs), Packet{Src: clientIP, Dst: vip, Proto: 6})
	if r.Fate != Accepted || r.Packet.Dst != pod2 || !r.DNAT || !r.Masquerade || runs != 1 {
		t.Fatalf("%+v (pseudo ran %d times), want DNAT to %v, masqueraded", r, runs, pod2)
	}
	var path []string
	for _, s := range r.Path {
		path = append(path, s.String())
	}
	want := "prerouting inet t mark rule 0: meta mark set meta mark | 0x00004000\n" +
		"input ipvs: scheduled 10.244.1.12:8080\n" +
		"postrouting inet t post rule 0: meta mark & 0x00004000 == 0x00004000 masquerade"
	if got := strings.Join(path, "\n"); got != want {
		t.Errorf("path\n%s\nwant\n%s", got, want)
	}
	ipvs.Priority = 111
	if r := trace(t, NewTracer(local, []*Table{tb}, ipvs), Packet{Src: clientIP, Dst: vip, Proto: 6}); r.Fate != Rejected {
		t.Errorf("a pseudo-chain after the reject chain: %+v, want rejected", r)
	}
}

func TestTracerFailsOnWhatItCannotRun(t *testing.T) {
	chain := func(typ ChainType, rules ...Rule) *Table {
		return &Table{Family: IP, Name: "t", Chains: []*Chain{{Name: "c", Base: &Base{Type: typ, Hook: Prerouting, Priority: 0}, Rules: rules}}}
	}
	for name, tb := range map[string]*Table{
		"a jump to a missing chain":     chain(Filter, Rule{Jump("nowhere")}),
		"a lookup in a missing set":     chain(Filter, Rule{Lookup{Key: []Field{IPDaddr}, Set: "nowhere"}}),
		"dnat in a filter chain":        chain(Filter, Rule{DNAT{To: pod1}}),
		"masquerade in prerouting":      chain(NAT, Rule{Masquerade{}}),
		"a key that does not fit":       {Family: IP, Name: "t", Sets: []*Set{{Name: "s", Key: []Type{TypeIPv4Addr}}}, Chains: chain(Filter, Rule{Lookup{Key: []Field{IPDaddr, THDport}, Set: "s"}}).Chains},
		"an update of a static set":     {Family: IP, Name: "t", Sets: []*Set{{Name: "s", Key: []Type{TypeIPv4Addr}}}, Chains: chain(Filter, Rule{Update{Key: []Field{IPSaddr}, Set: "s"}}).Chains},
		"a vmap into a plain set":       {Family: IP, Name: "t", Sets: []*Set{{Name: "s", Key: []Type{TypeIPv4Addr}}}, Chains: chain(Filter, Rule{Vmap{Key: []Field{IPDaddr}, Map: "s"}}).Chains},
		"jumps that never end":          {Family: IP, Name: "t", Chains: append(chain(Filter, Rule{Jump("loop")}).Chains, &Chain{Name: "loop", Rules: []Rule{{Jump("loop")}}})},
		"a jump to a base chain":        {Family: IP, Name: "t", Chains: append(chain(Filter, Rule{Jump("base")}).Chains, &Chain{Name: "base", Base: &Base{Type: Filter, Hook: Input}})},
		"a verdict map to a base chain": {Family: IP, Name: "t", Sets: []*Set{{Name: "m", Key: []Type{TypeIPv4Addr}, Data: []Type{TypeVerdict}, Elements: []Element{{Key: []Value{AddrValue(vip.Addr())}, Verdict: Goto("c")}}}}, Chains: chain(Filter, Rule{Vmap{Key: []Field{IPDaddr}, Map: "m"}}).Chains},
	} {
		t.Run(name, func(t *testing.T) {
			if r, err := NewTracer(isNode, []*Table{tb}).Trace(Packet{Src: clientIP, Dst: vip, Proto: 6}, func(uint32) uint32 { return 0 }); err == nil {
				t.Fatalf("traced to %+v, want an error", r)
			}
		})
	}
}

// svcTable picks one of three endpoints as proxyd's nftables mode does,
// with ClientIP affinity.
func svcTable() *Table {
	var rules []Rule
	eps := []netip.AddrPort{pod1, pod2, pod3}
	for i, ep := range eps {
		set := "aff" + ep.Addr().String()
		rules = append(rules, Rule{Proto{Proto: 6}, Lookup{Key: []Field{IPSaddr}, Set: set}, Update{Key: []Field{IPSaddr}, Set: set}, DNAT{To: eps[i]}})
	}
	for i, ep := range eps {
		r := Rule{Proto{Proto: 6}}
		if left := uint32(len(eps) - i); left > 1 {
			r = append(r, Numgen{Mod: left})
		}
		rules = append(rules, append(r, Update{Key: []Field{IPSaddr}, Set: "aff" + ep.Addr().String()}, DNAT{To: ep}))
	}
	tb := &Table{Family: IP, Name: "t", Chains: []*Chain{
		{Name: "pre", Base: &Base{Type: NAT, Hook: Prerouting, Priority: -100}, Rules: []Rule{{AddrIn{Field: IPDaddr, Prefix: netip.PrefixFrom(vip.Addr(), 32)}, Goto("svc")}}},
		{Name: "svc", Rules: rules},
	}}
	for _, ep := range eps {
		tb.Sets = append(tb.Sets, &Set{Name: "aff" + ep.Addr().String(), Key: []Type{TypeIPv4Addr}, Dynamic: true, Timeout: time.Hour, Size: 65535})
	}
	return tb
}

func TestEnumerateGivesEachEndpointItsProbability(t *testing.T) {
	tr := NewTracer(isNode, []*Table{svcTable()})
	p := Packet{Src: clientIP, Dst: vip, Proto: 6}
	out, err := tr.Enumerate(p)
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.AddrPort]float64{}
	for _, o := range out {
		got[o.Packet.Dst] += o.Probability
	}
	for _, ep := range []netip.AddrPort{pod1, pod2, pod3} {
		if math.Abs(got[ep]-1.0/3) > 1e-9 {
			t.Errorf("%v: probability %v, want 1/3 (all: %v)", ep, got[ep], got)
		}
	}
	// After a connection the client sticks: Enumerate sees what Trace
	// learned (and learns nothing itself).
	first := trace(t, tr, p)
	out, err = tr.Enumerate(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Packet.Dst != first.Packet.Dst || out[0].Probability != 1 {
		t.Errorf("after a first connection to %v: %+v, want that endpoint with probability 1", first.Packet.Dst, out)
	}
	other := Packet{Src: netip.MustParseAddr("10.244.2.7"), Dst: vip, Proto: 6}
	if out, _ := tr.Enumerate(other); len(out) != 3 {
		t.Errorf("another client: %d outcomes, want 3", len(out))
	}
}
