package nft

import "testing"

func TestMark(t *testing.T) {
	// nft --debug=netlink add rule ip t c meta mark & 0x00004000 == 0x00004000
	checkStmt(t, IP, Rule{Mark{Mask: 0x4000, Value: 0x4000}}, "meta mark & 0x00004000 == 0x00004000", `
[ meta load mark => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x00004000 ) ^ 0x00000000 ]
[ cmp eq reg 1 0x00004000 ]`)
	// nft --debug=netlink add rule ip t c meta mark & 0x00004000 != 0x00000000
	checkStmt(t, IP, Rule{Mark{Mask: 0x4000, Not: true}}, "meta mark & 0x00004000 != 0x00000000", `
[ meta load mark => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x00004000 ) ^ 0x00000000 ]
[ cmp neq reg 1 0x00000000 ]`)
}

func TestSetMark(t *testing.T) {
	// nft --debug=netlink add rule ip t c meta mark set meta mark | 0x00004000
	checkStmt(t, IP, Rule{SetMark{Op: MarkOr, Value: 0x4000}}, "meta mark set meta mark | 0x00004000", `
[ meta load mark => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0xffffbfff ) ^ 0x00004000 ]
[ meta set mark with reg 1 ]`)
	// nft --debug=netlink add rule ip t c meta mark set meta mark ^ 0x00004000
	checkStmt(t, IP, Rule{SetMark{Op: MarkXor, Value: 0x4000}}, "meta mark set meta mark ^ 0x00004000", `
[ meta load mark => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0xffffffff ) ^ 0x00004000 ]
[ meta set mark with reg 1 ]`)
	// nft --debug=netlink add rule ip t c meta mark set meta mark & 0xffffbfff
	checkStmt(t, IP, Rule{SetMark{Op: MarkAnd, Value: 0xffffbfff}}, "meta mark set meta mark & 0xffffbfff", `
[ meta load mark => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0xffffbfff ) ^ 0x00000000 ]
[ meta set mark with reg 1 ]`)
	for _, s := range []SetMark{{Op: MarkOr}, {Op: MarkXor}, {Op: MarkAnd, Value: 0xffffffff}} {
		if _, err := CompileRule(IP, Rule{s}); err == nil {
			t.Errorf("%s compiled, but nft would print it differently", s.text(IP))
		}
	}
}
