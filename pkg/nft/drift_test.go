package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// driftTable is a small table of the shape proxyd writes: a verdict map,
// a dynamic set, a base chain and a service chain.
func driftTable() *Table {
	key := []Field{IPDaddr, MetaL4Proto, THDport}
	elem := func(a string, port uint32, c string) Element {
		return Element{Key: []Value{AddrValue(netip.MustParseAddr(a)), NumValue(6), NumValue(port)}, Verdict: Goto(c)}
	}
	return &Table{Family: IP, Name: "t",
		Sets: []*Set{
			{Name: "vips", Key: KeyTypes(key...), Data: []Type{TypeVerdict}, Elements: []Element{elem("10.96.0.10", 80, "svc"), elem("10.96.0.11", 80, "svc")}},
			{Name: "aff", Key: []Type{TypeIPv4Addr}, Dynamic: true, Timeout: 3 * time.Hour, Size: 65535},
		},
		Chains: []*Chain{
			{Name: "pre", Base: &Base{Type: NAT, Hook: Prerouting, Priority: -100}, Rules: []Rule{{Vmap{Key: key, Map: "vips"}}}},
			{Name: "svc", Rules: []Rule{
				{Proto{Proto: 6}, Numgen{Mod: 2}, Update{Key: []Field{IPSaddr}, Set: "aff"}, DNAT{To: pod1}},
				{Proto{Proto: 6}, Update{Key: []Field{IPSaddr}, Set: "aff"}, DNAT{To: pod2}},
			}},
		}}
}

func TestDriftDescribesEachDifferenceAndIgnoresLearnedElements(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Table) *Table
		want   []string
	}{
		{"the same table in another order has none", func(k *Table) *Table {
			slices.Reverse(k.Sets)
			slices.Reverse(k.Chains)
			slices.Reverse(k.Sets[1].Elements)
			return k
		}, nil},
		{"what packets taught a dynamic set is not drift", func(k *Table) *Table {
			k.Set("aff").Elements = []Element{{Key: []Value{AddrValue(clientIP)}, Expires: time.Hour}}
			return k
		}, nil},
		{"a deleted element and a foreign one are named", func(k *Table) *Table {
			s := k.Set("vips")
			s.Elements[0].Key[2] = NumValue(8080)
			return k
		}, []string{
			"map vips: element missing: 10.96.0.10 . tcp . 80 : goto svc",
			"map vips: element not meant to be there: 10.96.0.10 . tcp . 8080 : goto svc",
		}},
		{"a deleted rule is named", func(k *Table) *Table {
			k.Chain("svc").Rules = k.Chain("svc").Rules[1:]
			return k
		}, []string{"chain svc: rule missing: meta l4proto tcp numgen random mod 2 0 update @aff { ip saddr } dnat to 10.244.1.11:8080"}},
		{"rules in another order", func(k *Table) *Table {
			slices.Reverse(k.Chain("svc").Rules)
			return k
		}, []string{"chain svc holds the right rules in another order"}},
		{"a base chain moved to another priority", func(k *Table) *Table {
			k.Chain("pre").Base.Priority = 0
			return k
		}, []string{"chain pre is type nat hook prerouting priority filter; policy accept;, want type nat hook prerouting priority dstnat; policy accept;"}},
		{"a missing chain, and a chain and a set nobody wrote", func(k *Table) *Table {
			k.Chains = append(k.Chains[1:], &Chain{Name: "intruder"})
			k.Sets = append(k.Sets, &Set{Name: "extra", Key: []Type{TypeIPv4Addr}})
			return k
		}, []string{"set extra is not meant to be there", "chain pre is missing", "chain intruder is not meant to be there"}},
		{"no table at all", func(*Table) *Table { return nil }, []string{"table ip t is missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Drift(tc.change(driftTable()), driftTable())
			if !slices.Equal(got, tc.want) {
				t.Errorf("drift:\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestDriftCapsALongStory(t *testing.T) {
	want := driftTable()
	s := want.Set("vips")
	for i := range 100 {
		s.Elements = append(s.Elements, Element{Key: []Value{AddrValue(netip.AddrFrom4([4]byte{10, 97, 0, byte(i)})), NumValue(6), NumValue(80)}, Verdict: Goto("svc")})
	}
	have := driftTable()
	got := Drift(have, want)
	if len(got) != maxDiffLines+1 || got[maxDiffLines] != fmt.Sprintf("map vips: element missing: … and %d more", 100-maxDiffLines) {
		t.Errorf("%d lines, the last %q", len(got), got[len(got)-1])
	}
}
