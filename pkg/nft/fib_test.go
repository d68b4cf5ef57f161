package nft

import "testing"

func TestFibLocal(t *testing.T) {
	// nft --debug=netlink add rule ip t c fib daddr type local
	checkStmt(t, IP, Rule{FibLocal{}}, "fib daddr type local", `
[ fib daddr type => reg 1 ]
[ cmp eq reg 1 0x00000002 ]`)
	// nft --debug=netlink add rule inet i c fib saddr type local meta mark set meta mark | 0x4000
	checkStmt(t, INet, Rule{FibLocal{Source: true}, SetMark{Op: MarkOr, Value: 0x4000}}, "fib saddr type local meta mark set meta mark | 0x00004000", `
[ fib saddr type => reg 1 ]
[ cmp eq reg 1 0x00000002 ]
[ meta load mark => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0xffffbfff ) ^ 0x00004000 ]
[ meta set mark with reg 1 ]`)
}
