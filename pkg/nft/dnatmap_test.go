package nft

import "testing"

func TestDNATMap(t *testing.T) {
	// nft --debug=netlink add rule ip utcp svc meta l4proto tcp dnat ip to numgen random mod 65536 map @eps
	checkStmt(t, IP, Rule{Proto{Proto: 6}, DNATMap{Family: IP, Mod: 65536, Map: "eps"}}, "meta l4proto tcp dnat ip to numgen random mod 65536 map @eps", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]
[ numgen reg 1 = random mod 65536 ]
[ byteorder reg 1 = hton(reg 1, 4, 4) ]
[ lookup reg 1 set eps dreg 1 ]
[ nat dnat ip addr_min reg 1 proto_min reg 9 ]`)
	// nft --debug=netlink add rule ip6 utcp svc meta l4proto tcp dnat ip6 to numgen random mod 65536 map @eps
	checkStmt(t, IP6, Rule{Proto{Proto: 6}, DNATMap{Family: IP6, Mod: 65536, Map: "eps"}}, "meta l4proto tcp dnat ip6 to numgen random mod 65536 map @eps", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]
[ numgen reg 1 = random mod 65536 ]
[ byteorder reg 1 = hton(reg 1, 4, 4) ]
[ lookup reg 1 set eps dreg 1 ]
[ nat dnat ip6 addr_min reg 1 proto_min reg 2 ]`)
	if _, err := CompileRule(IP, Rule{DNATMap{Family: IP6, Mod: 65536, Map: "eps"}}); err == nil {
		t.Error("an ip6 endpoint map compiled in an ip table")
	}
}
