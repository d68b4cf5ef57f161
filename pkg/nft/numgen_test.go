package nft

import "testing"

func TestNumgen(t *testing.T) {
	// nft --debug=netlink add rule ip t c numgen random mod 3 0
	checkStmt(t, IP, Rule{Numgen{Mod: 3}}, "numgen random mod 3 0", `
[ numgen reg 1 = random mod 3 ]
[ cmp eq reg 1 0x00000000 ]`)
}
