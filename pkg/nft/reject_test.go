package nft

import "testing"

func TestReject(t *testing.T) {
	// nft --debug=netlink add rule ip t c reject
	checkStmt(t, IP, Rule{Reject{}}, "reject", `[ reject type 0 code 3 ]`)
	// nft --debug=netlink add rule inet i c ct state new reject
	checkStmt(t, INet, Rule{CtState{Bits: CtNew}, Reject{}}, "ct state new reject", `
[ ct load state => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x00000008 ) ^ 0x00000000 ]
[ cmp neq reg 1 0x00000000 ]
[ reject type 2 code 1 ]`)
	// After "ip daddr @v" in an inet table nft itself writes "reject type 0
	// code 3" and lists it as "reject with icmp port-unreachable".
	// nft --debug=netlink add rule inet i c ct state new ip daddr @v reject
	checkStmt(t, INet, Rule{CtState{Bits: CtNew}, Lookup{Key: []Field{IPDaddr}, Set: "v"}, Reject{Family: IP}}, "ct state new ip daddr @v reject with icmp port-unreachable", `
[ ct load state => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x00000008 ) ^ 0x00000000 ]
[ cmp neq reg 1 0x00000000 ]
[ meta load nfproto => reg 1 ]
[ cmp eq reg 1 0x00000002 ]
[ payload load 4b @ network header + 16 => reg 1 ]
[ lookup reg 1 set v ]
[ reject type 0 code 3 ]`)
	// nft --debug=netlink add rule inet i c ct state new ip6 daddr fd00:10:96::/112 reject
	checkStmt(t, INet, Rule{Reject{Family: IP6}}, "reject with icmpv6 port-unreachable", `[ reject type 0 code 4 ]`)
	if _, err := CompileRule(IP, Rule{Reject{Family: IP}}); err == nil {
		t.Error("an ip table's reject with a family compiled: it would decompile as plain reject")
	}
}
