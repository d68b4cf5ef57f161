package nft

import "testing"

func TestVmap(t *testing.T) {
	// nft --debug=netlink add rule ip t c ip daddr . meta l4proto . th dport vmap @m
	checkStmt(t, IP, Rule{Vmap{Key: []Field{IPDaddr, MetaL4Proto, THDport}, Map: "m"}},
		"ip daddr . meta l4proto . th dport vmap @m", `
[ payload load 4b @ network header + 16 => reg 1 ]
[ meta load l4proto => reg 9 ]
[ payload load 2b @ transport header + 2 => reg 10 ]
[ lookup reg 1 set m dreg 0 ]`)
	// nft --debug=netlink add rule ip t c meta l4proto . th dport vmap @np
	checkStmt(t, IP, Rule{Vmap{Key: []Field{MetaL4Proto, THDport}, Map: "np"}},
		"meta l4proto . th dport vmap @np", `
[ meta load l4proto => reg 1 ]
[ payload load 2b @ transport header + 2 => reg 9 ]
[ lookup reg 1 set np dreg 0 ]`)
}
