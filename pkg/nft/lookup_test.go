package nft

import "testing"

func TestLookup(t *testing.T) {
	// nft --debug=netlink add rule ip t c ip daddr . meta l4proto . th dport @s
	checkStmt(t, IP, Rule{Lookup{Key: []Field{IPDaddr, MetaL4Proto, THDport}, Set: "s"}},
		"ip daddr . meta l4proto . th dport @s", `
[ payload load 4b @ network header + 16 => reg 1 ]
[ meta load l4proto => reg 9 ]
[ payload load 2b @ transport header + 2 => reg 10 ]
[ lookup reg 1 set s ]`)
	// nft --debug=netlink add rule ip t c ip saddr . ip daddr @hp
	checkStmt(t, IP, Rule{Lookup{Key: []Field{IPSaddr, IPDaddr}, Set: "hp"}},
		"ip saddr . ip daddr @hp", `
[ payload load 4b @ network header + 12 => reg 1 ]
[ payload load 4b @ network header + 16 => reg 9 ]
[ lookup reg 1 set hp ]`)
	// nft --debug=netlink add rule inet i c ip6 daddr . meta l4proto . th dport @s6 drop
	checkStmt(t, INet, Rule{Lookup{Key: []Field{IP6Daddr, MetaL4Proto, THDport}, Set: "s6"}, Drop},
		"ip6 daddr . meta l4proto . th dport @s6 drop", `
[ meta load nfproto => reg 1 ]
[ cmp eq reg 1 0x0000000a ]
[ payload load 16b @ network header + 24 => reg 1 ]
[ meta load l4proto => reg 2 ]
[ payload load 2b @ transport header + 2 => reg 13 ]
[ lookup reg 1 set s6 ]
[ immediate reg 0 drop ]`)
	// nft --debug=netlink add rule inet i c ip daddr . meta l4proto . th dport . ip saddr @h masquerade
	checkStmt(t, INet, Rule{Lookup{Key: []Field{IPDaddr, MetaL4Proto, THDport, IPSaddr}, Set: "h"}, Masquerade{}},
		"ip daddr . meta l4proto . th dport . ip saddr @h masquerade", `
[ meta load nfproto => reg 1 ]
[ cmp eq reg 1 0x00000002 ]
[ payload load 4b @ network header + 16 => reg 1 ]
[ meta load l4proto => reg 9 ]
[ payload load 2b @ transport header + 2 => reg 10 ]
[ payload load 4b @ network header + 12 => reg 11 ]
[ lookup reg 1 set h ]
[ masq ]`)
	// A negated lookup into an interval set. nft adds a byteorder for
	// meta l4proto before such a lookup and encodes the set's elements
	// to match; proxyd loads the protocol as it is and encodes its
	// elements the same way (the IPVS VM test sends packets through it).
	// nft --debug=netlink add rule inet i c ip daddr . meta l4proto . th dport . ip saddr != @src
	checkStmt(t, INet, Rule{Lookup{Key: []Field{IPDaddr, MetaL4Proto, THDport, IPSaddr}, Set: "src", Not: true}},
		"ip daddr . meta l4proto . th dport . ip saddr != @src", `
[ meta load nfproto => reg 1 ]
[ cmp eq reg 1 0x00000002 ]
[ payload load 4b @ network header + 16 => reg 1 ]
[ meta load l4proto => reg 9 ]
[ payload load 2b @ transport header + 2 => reg 10 ]
[ payload load 4b @ network header + 12 => reg 11 ]
[ lookup reg 1 set src 0x1 ]`)
}
