package nft

import "testing"

func TestDNATPick(t *testing.T) {
	// nft --debug=netlink add rule ip t c dnat ip to ip daddr . sctp dport . numgen random mod 1 map @eps-sctp
	checkStmt(t, IP, Rule{DNATPick{Family: IP, Proto: 132, Mod: 1, Map: "eps-sctp"}}, "dnat ip to ip daddr . sctp dport . numgen random mod 1 map @eps-sctp", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000084 ]
[ payload load 4b @ network header + 16 => reg 1 ]
[ payload load 2b @ transport header + 2 => reg 9 ]
[ numgen reg 10 = random mod 1 ]
[ lookup reg 1 set eps-sctp dreg 1 ]
[ nat dnat ip addr_min reg 1 proto_min reg 9 ]`)
	// nft --debug=netlink add rule ip6 t c dnat ip6 to ip6 daddr . udp dport . numgen random mod 3 map @eps-udp
	checkStmt(t, IP6, Rule{DNATPick{Family: IP6, Proto: 17, Mod: 3, Map: "eps-udp"}}, "dnat ip6 to ip6 daddr . udp dport . numgen random mod 3 map @eps-udp", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000011 ]
[ payload load 16b @ network header + 24 => reg 1 ]
[ payload load 2b @ transport header + 2 => reg 2 ]
[ numgen reg 13 = random mod 3 ]
[ lookup reg 1 set eps-udp dreg 1 ]
[ nat dnat ip6 addr_min reg 1 proto_min reg 2 ]`)
	for _, bad := range []struct {
		f Family
		s DNATPick
	}{{IP, DNATPick{Family: IP6, Proto: 6, Mod: 2, Map: "m"}}, {IP, DNATPick{Family: IP, Proto: 1, Mod: 2, Map: "m"}}, {IP, DNATPick{Family: IP, Proto: 6, Map: "m"}}} {
		if _, err := CompileRule(bad.f, Rule{bad.s}); err == nil {
			t.Errorf("%s compiled in a table of family %s", bad.s.text(bad.f), bad.f)
		}
	}
}
