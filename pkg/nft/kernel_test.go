package nft

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/testns"
)

// everyStatement is a table of family f with every statement kind and
// every kind of set this package writes.
func everyStatement(f Family) *Table {
	ip := f
	if f == INet {
		ip = IP
	}
	a := netip.MustParseAddr("10.96.0.10")
	ep := netip.MustParseAddrPort("10.244.1.11:8080")
	cidr := netip.MustParsePrefix("10.244.0.0/16")
	one := netip.MustParsePrefix("10.88.0.2/32")
	odd := netip.MustParsePrefix("10.96.0.0/14")
	if ip == IP6 {
		a = netip.MustParseAddr("fd00:10:96::10")
		ep = netip.MustParseAddrPort("[fd00:10:244:1::11]:8080")
		cidr = netip.MustParsePrefix("fd00:10:244::/56")
		one = netip.MustParsePrefix("fd00:88::2/128")
		odd = netip.MustParsePrefix("fd00:10:96::/110")
	}
	tuple := []Field{Daddr(ip), MetaL4Proto, THDport}
	tcp := uint32(6)
	return &Table{Family: f, Name: "every", Sets: []*Set{
		{Name: "tuples", Key: KeyTypes(tuple...), Elements: []Element{
			{Key: []Value{AddrValue(a), NumValue(tcp), NumValue(80)}},
			{Key: []Value{AddrValue(a), NumValue(17), NumValue(53)}},
		}},
		{Name: "dispatch", Key: KeyTypes(tuple...), Data: []Type{TypeVerdict}, Elements: []Element{
			{Key: []Value{AddrValue(a), NumValue(tcp), NumValue(80)}, Verdict: Goto("svc")},
			{Key: []Value{AddrValue(a), NumValue(132), NumValue(9999)}, Verdict: Drop},
		}},
		{Name: "vips", Key: []Type{AddrType(ip)}, Elements: []Element{{Key: []Value{AddrValue(a)}}}},
		{Name: "sources", Key: KeyTypes(append(tuple, Saddr(ip))...), Interval: true, Elements: []Element{
			{Key: []Value{AddrValue(a), NumValue(tcp), NumValue(80), PrefixValue(cidr)}},
			{Key: []Value{AddrValue(a), NumValue(tcp), NumValue(80), PrefixValue(one)}},
		}},
		{Name: "endpoints", Key: []Type{TypeMark}, Data: []Type{AddrType(ip), TypeInetService}, Elements: []Element{
			{Key: []Value{NumValue(1)}, Data: []Value{AddrValue(ep.Addr()), NumValue(uint32(ep.Port()))}},
		}},
		{Name: "sticky", Key: []Type{AddrType(ip)}, Dynamic: true, Timeout: 3 * time.Hour, Size: 65535},
		endpointMap("eps", ip, 6, ep, ep, ep),
	}, Chains: []*Chain{
		{Name: "pre", Base: &Base{Type: NAT, Hook: Prerouting, Priority: -100}, Rules: []Rule{
			{Vmap{Key: tuple, Map: "dispatch"}},
			{FibLocal{}, AddrIn{Field: Daddr(ip), Prefix: one, Not: true}, Vmap{Key: []Field{MetaL4Proto, THDport}, Map: "dispatch2"}},
		}},
		{Name: "post", Base: &Base{Type: NAT, Hook: Postrouting, Priority: 100}, Rules: []Rule{
			{CtStatus{Bits: CtDNAT}, Lookup{Key: []Field{Saddr(ip), Daddr(ip)}, Set: "pairs"}, Masquerade{}},
			{Mark{Mask: 0x4000, Value: 0x4000}, SetMark{Op: MarkXor, Value: 0x4000}, Masquerade{FullyRandom: true}},
			{Mark{Mask: 0x4000, Not: true}, SetMark{Op: MarkAnd, Value: 0xffffbfff}, Masquerade{}},
		}},
		{Name: "guard", Base: &Base{Type: Filter, Hook: Prerouting, Priority: -110, Policy: PolicyAccept}, Rules: []Rule{
			{CtState{Bits: CtNew}, Lookup{Key: tuple, Set: "tuples"}, Lookup{Key: append(tuple, Saddr(ip)), Set: "sources", Not: true}, Drop},
			{CtState{Bits: CtNew}, AddrIn{Field: Daddr(ip), Prefix: odd}, rejectAfter(f, ip)},
			{FibLocal{Source: true}, Jump("helper")},
		}},
		{Name: "out", Base: &Base{Type: Filter, Hook: Output, Priority: -90}, Rules: []Rule{
			{CtState{Bits: CtNew}, Lookup{Key: []Field{Daddr(ip)}, Set: "vips"}, rejectAfter(f, ip)},
			{CtState{Bits: CtNew}, Reject{}},
		}},
		{Name: "helper", Rules: []Rule{
			{AddrIn{Field: Saddr(ip), Prefix: cidr}, Return},
			{Accept},
		}},
		{Name: "svc", Rules: []Rule{
			{AddrIn{Field: Saddr(ip), Prefix: cidr, Not: true}, SetMark{Op: MarkOr, Value: 0x4000}},
			{Proto{Proto: 6}, Lookup{Key: []Field{Saddr(ip)}, Set: "sticky"}, Update{Key: []Field{Saddr(ip)}, Set: "sticky"}, DNAT{To: ep}},
			{Proto{Proto: 6}, Numgen{Mod: 2}, Update{Key: []Field{Saddr(ip)}, Set: "sticky", Timeout: time.Hour}, DNAT{To: ep}},
			{DPort{Proto: 6, Port: 80}, Goto("svc2")},
		}},
		{Name: "svc2", Rules: []Rule{{Proto{Proto: 17}, DNAT{To: ep}}}},
		{Name: "svc3", Rules: []Rule{{Proto{Proto: 6}, DNATMap{Family: ip, Mod: 65536, Map: "eps"}}}},
	}}
}

// endpointMap is an endpoint map of family ip and protocol proto that
// splits 65536 numbers evenly among eps.
func endpointMap(name string, ip Family, proto uint8, eps ...netip.AddrPort) *Set {
	s := &Set{Name: name, Key: []Type{TypeInteger}, Data: []Type{AddrType(ip), TypeInetService}, Interval: true,
		Typeof: &Typeof{Mod: 65536, Family: ip, Proto: proto}}
	for i, ep := range eps {
		lo, hi := uint32(i*65536/len(eps)), uint32((i+1)*65536/len(eps)-1)
		s.Elements = append(s.Elements, Element{Key: []Value{NumRangeValue(lo, hi)}, Data: []Value{AddrValue(ep.Addr()), NumValue(uint32(ep.Port()))}})
	}
	return s
}

// rejectAfter is the reject nft writes after a match of family ip.
func rejectAfter(f, ip Family) Reject {
	if f == INet {
		return Reject{Family: ip}
	}
	return Reject{}
}

// addPairsAndDispatch2 completes everyStatement with the two sets its
// rules name that need the table's IP family.
func addPairsAndDispatch2(t *Table) {
	ip := t.Family
	if ip == INet {
		ip = IP
	}
	t.Sets = append(t.Sets,
		&Set{Name: "pairs", Key: []Type{AddrType(ip), AddrType(ip)}},
		&Set{Name: "dispatch2", Key: []Type{TypeInetProto, TypeInetService}, Data: []Type{TypeVerdict}, Elements: []Element{
			{Key: []Value{NumValue(6), NumValue(30080)}, Verdict: Goto("svc")},
		}})
}

func writeTable(t *testing.T, ns *testns.NS, tb *Table) {
	t.Helper()
	conn, err := Dial(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := Queue(conn, tb); err != nil {
		t.Fatal(err)
	}
	if err := conn.Flush(); err != nil {
		t.Fatalf("write %s %s: %v", tb.Family, tb.Name, err)
	}
}

// A table of every statement and set kind, written over netlink, lists in
// nft exactly as it prints, lists as the same text loaded by nft does, and
// reads back into the table it was.
func TestKernelWriteListReadBack(t *testing.T) {
	for _, f := range []Family{IP, IP6, INet} {
		t.Run(f.String(), func(t *testing.T) {
			tb := everyStatement(f)
			addPairsAndDispatch2(tb)
			ns := testns.New(t, "nftlayer")
			writeTable(t, ns, tb)
			got := ns.Run(t, "nft", "list", "table", f.String(), tb.Name)
			if CanonicalListing(got) != CanonicalListing(tb.String()) {
				t.Errorf("nft lists\n%s\nthe table prints\n%s", got, tb.String())
				t.Errorf("diff:\n%s", lineDiff(CanonicalListing(got), CanonicalListing(tb.String())))
			}
			for _, raw := range []string{"unknown", "invalid", "@nh,", "@th,"} {
				if strings.Contains(got, raw) {
					t.Errorf("the listing has %q:\n%s", raw, got)
				}
			}
			ref := testns.New(t, "nftlayerref")
			if out, err := ref.Try("sh", "-c", "nft -f - <<'EOF'\n"+tb.String()+"EOF\n"); err != nil {
				t.Fatalf("nft -f of the printed table: %v\n%s", err, out)
			}
			if byNft := ref.Run(t, "nft", "list", "table", f.String(), tb.Name); CanonicalListing(byNft) != CanonicalListing(got) {
				t.Errorf("the netlink-written table lists differently from the nft-written one (- netlink, + nft):\n%s", lineDiff(CanonicalListing(got), CanonicalListing(byNft)))
			}
			r, err := NewReader(ns.FD)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			back, err := r.Table(f, tb.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back.Canonical(), tb.Canonical()) {
				t.Errorf("read back\n%s\nwrote\n%s", back.Canonical(), tb.Canonical())
			}
			if none, err := r.Table(f, "absent"); none != nil || err != nil {
				t.Errorf("a missing table reads as %v, %v", none, err)
			}
		})
	}
}

// lineDiff lists the lines only in a (-) or only in b (+).
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, n := range count {
		switch {
		case n > 0:
			out = append(out, "- "+l)
		case n < 0:
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// What a rule (here nft, standing in for one) adds to a dynamic set reads
// back with the time it has left.
func TestKernelReadsLearnedElements(t *testing.T) {
	tb := everyStatement(IP)
	addPairsAndDispatch2(tb)
	ns := testns.New(t, "nftlearn")
	writeTable(t, ns, tb)
	ns.Run(t, "nft", "add", "element", "ip", tb.Name, "sticky", "{ 10.244.1.100, 10.244.1.101 timeout 1h }")
	r, err := NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	back, err := r.Table(IP, tb.Name)
	if err != nil {
		t.Fatal(err)
	}
	sticky := back.Canonical().Set("sticky")
	if len(sticky.Elements) != 2 {
		t.Fatalf("sticky read back as %+v", sticky)
	}
	a, b := sticky.Elements[0], sticky.Elements[1]
	if a.Key[0].Addr() != netip.MustParseAddr("10.244.1.100") || a.Timeout != 0 || a.Expires <= 2*time.Hour || a.Expires > 3*time.Hour {
		t.Errorf("first learned element %s", a.Text(sticky))
	}
	if b.Timeout != time.Hour || b.Expires <= 59*time.Minute || b.Expires > time.Hour {
		t.Errorf("second learned element %s", b.Text(sticky))
	}
	if !strings.Contains(sticky.Elements[1].Text(sticky), "10.244.1.101 timeout 1h expires ") {
		t.Errorf("prints as %q", sticky.Elements[1].Text(sticky))
	}
}

// An endpoint map's endpoints change by elements alone, in one
// transaction (old ranges out, new ones in), and the map reads back, lists
// and reloads as the new one; traced, each endpoint gets its share.
func TestKernelEndpointMapChangesByElements(t *testing.T) {
	ns := testns.New(t, "nfteps")
	ap := netip.MustParseAddrPort
	a, b, c := ap("10.244.1.11:8080"), ap("10.244.1.12:8080"), ap("10.244.1.13:8080")
	before := endpointMap("eps", IP, 17, a, b, c)
	tb := &Table{Family: IP, Name: "eps", Sets: []*Set{before}, Chains: []*Chain{
		{Name: "pre", Base: &Base{Type: NAT, Hook: Prerouting, Priority: -100}, Rules: []Rule{{Proto{Proto: 17}, DNATMap{Family: IP, Mod: 65536, Map: "eps"}}}},
	}}
	writeTable(t, ns, tb)
	conn, err := Dial(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	after := endpointMap("eps", IP, 17, b, ap("10.244.1.14:8080"))
	g := GTable(IP, "eps")
	if err := DelElements(conn, g, before, before.Elements); err != nil {
		t.Fatal(err)
	}
	if err := AddElements(conn, g, after, after.Elements); err != nil {
		t.Fatal(err)
	}
	if err := conn.Flush(); err != nil {
		t.Fatalf("replace the ranges: %v", err)
	}
	tb.Sets = []*Set{after}
	got := ns.Run(t, "nft", "list", "table", "ip", "eps")
	if CanonicalListing(got) != CanonicalListing(tb.String()) {
		t.Errorf("nft lists\n%s\nwant\n%s", got, tb.String())
	}
	ns.Run(t, "nft", "delete", "table", "ip", "eps")
	if out, err := ns.Try("sh", "-c", "nft -f - <<'EOF'\n"+got+"EOF\n"); err != nil {
		t.Fatalf("nft -f of the listing: %v\n%s", err, out)
	}
	if again := ns.Run(t, "nft", "list", "table", "ip", "eps"); again != got {
		t.Errorf("the listing reloaded lists as\n%s\nnot\n%s", again, got)
	}
	r, err := NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	back, err := r.Table(IP, "eps")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Canonical(), tb.Canonical()) {
		t.Fatalf("read back\n%s\nwant\n%s", back, tb)
	}
	out, err := NewTracer(isNode, []*Table{back}).Enumerate(Packet{Src: clientIP, Dst: ap("10.96.0.20:53"), Proto: 17})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Probability != 0.5 || out[1].Probability != 0.5 {
		t.Errorf("outcomes %+v, want two endpoints at 1/2", out)
	}
}

// Another table of the same family — iptables-nft's, as kubelet leaves on
// every node — is none of the reader's business: the kernel dumps every
// chain of a family whatever table was asked for, and the reader keeps
// only the table's own.
func TestKernelReadsOneTableAmongOthers(t *testing.T) {
	for _, f := range []Family{IP, INet} {
		t.Run(f.String(), func(t *testing.T) {
			tb := everyStatement(f)
			addPairsAndDispatch2(tb)
			ns := testns.New(t, "nftothers")
			foreign := "table " + f.String() + " mangle {\n" +
				"\tset s { type ipv4_addr; comment \"not proxyd's\"; }\n" +
				"\tchain KUBE-KUBELET-CANARY { }\n" +
				"\tchain OUTPUT { type route hook output priority mangle; policy accept; counter jump KUBE-KUBELET-CANARY comment \"kubelet\"; }\n" +
				"}\n"
			if out, err := ns.Try("sh", "-c", "nft -f - <<'EOF'\n"+foreign+"EOF\n"); err != nil {
				t.Fatalf("nft -f of the foreign table: %v\n%s", err, out)
			}
			writeTable(t, ns, tb)
			r, err := NewReader(ns.FD)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			back, err := r.Table(f, tb.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back.Canonical(), tb.Canonical()) {
				t.Errorf("read back\n%s\nwrote\n%s", back.Canonical(), tb.Canonical())
			}
		})
	}
}

// The generation counts every committed transaction by one, whoever
// commits, and stays put while nobody does.
func TestKernelGenerationCountsCommits(t *testing.T) {
	ns := testns.New(t, "nftgen")
	conn, err := Dial(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	g0, err := conn.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if g, err := conn.Generation(); err != nil || g != g0 {
		t.Fatalf("generation moved from %d to %d (%v) with nobody committing", g0, g, err)
	}
	conn.AddTable(GTable(IP, "mine"))
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "add", "table", "ip", "theirs")
	if g, err := conn.Generation(); err != nil || g != g0+2 {
		t.Fatalf("generation %d (%v) after two commits from %d, want %d", g, err, g0, g0+2)
	}
}
