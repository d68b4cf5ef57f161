package nft

import "testing"

func TestMasquerade(t *testing.T) {
	// nft --debug=netlink add rule ip t c masquerade
	checkStmt(t, IP, Rule{Masquerade{}}, "masquerade", `[ masq ]`)
	// nft --debug=netlink add rule ip t c masquerade fully-random
	checkStmt(t, IP, Rule{Masquerade{FullyRandom: true}}, "masquerade fully-random", `[ masq flags 0x10 ]`)
}
