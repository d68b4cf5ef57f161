package nft

import (
	"net/netip"
	"testing"
)

func TestAddrIn(t *testing.T) {
	p := netip.MustParsePrefix
	// nft --debug=netlink add rule ip t c ip daddr != 127.0.0.0/8
	checkStmt(t, IP, Rule{AddrIn{Field: IPDaddr, Prefix: p("127.0.0.0/8"), Not: true}}, "ip daddr != 127.0.0.0/8", `
[ payload load 1b @ network header + 16 => reg 1 ]
[ cmp neq reg 1 0x0000007f ]`)
	// nft --debug=netlink add rule ip t c ip saddr 10.244.0.0/14
	checkStmt(t, IP, Rule{AddrIn{Field: IPSaddr, Prefix: p("10.244.0.0/14")}}, "ip saddr 10.244.0.0/14", `
[ payload load 4b @ network header + 12 => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x0000fcff ) ^ 0x00000000 ]
[ cmp eq reg 1 0x0000f40a ]`)
	// nft --debug=netlink add rule ip t c ip daddr 10.88.0.2
	checkStmt(t, IP, Rule{AddrIn{Field: IPDaddr, Prefix: p("10.88.0.2/32")}}, "ip daddr 10.88.0.2", `
[ payload load 4b @ network header + 16 => reg 1 ]
[ cmp eq reg 1 0x0200580a ]`)
	// nft --debug=netlink add rule ip6 t6 c ip6 saddr != fd00:10:244::/56 reject
	checkStmt(t, IP6, Rule{AddrIn{Field: IP6Saddr, Prefix: p("fd00:10:244::/56"), Not: true}, Reject{}}, "ip6 saddr != fd00:10:244::/56 reject", `
[ payload load 7b @ network header + 8 => reg 1 ]
[ cmp neq reg 1 0x100000fd 0x00004402 ]
[ reject type 0 code 4 ]`)
	// nft --debug=netlink add rule inet i c ct state new ip6 daddr fd00:10:96::/112 (then reject)
	checkStmt(t, INet, Rule{CtState{Bits: CtNew}, AddrIn{Field: IP6Daddr, Prefix: p("fd00:10:96::/112")}}, "ct state new ip6 daddr fd00:10:96::/112", `
[ ct load state => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x00000008 ) ^ 0x00000000 ]
[ cmp neq reg 1 0x00000000 ]
[ meta load nfproto => reg 1 ]
[ cmp eq reg 1 0x0000000a ]
[ payload load 14b @ network header + 24 => reg 1 ]
[ cmp eq reg 1 0x100000fd 0x00009600 0x00000000 0x00000000 ]`)
}

func TestAddrInRefusesWhatCannotMatch(t *testing.T) {
	for _, r := range []Rule{
		{AddrIn{Field: IPDaddr, Prefix: netip.MustParsePrefix("fd00::/8")}},
		{AddrIn{Field: IPDaddr, Prefix: netip.MustParsePrefix("0.0.0.0/0")}},
		{AddrIn{Field: THDport, Prefix: netip.MustParsePrefix("10.0.0.0/8")}},
		{AddrIn{Field: IP6Daddr, Prefix: netip.MustParsePrefix("fd00::/8")}}, // in an ip table
	} {
		if _, err := CompileRule(IP, r); err == nil {
			t.Errorf("%s compiled", r.Text(IP))
		}
	}
}
