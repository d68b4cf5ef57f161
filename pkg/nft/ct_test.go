package nft

import "testing"

func TestCtState(t *testing.T) {
	// nft --debug=netlink add rule ip t c ct state new
	checkStmt(t, IP, Rule{CtState{Bits: CtNew}}, "ct state new", `
[ ct load state => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x00000008 ) ^ 0x00000000 ]
[ cmp neq reg 1 0x00000000 ]`)
	// nft --debug=netlink add rule inet i c ct state new,established
	checkStmt(t, INet, Rule{CtState{Bits: CtNew | 2}}, "ct state established,new", `
[ ct load state => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x0000000a ) ^ 0x00000000 ]
[ cmp neq reg 1 0x00000000 ]`)
}

func TestCtStatus(t *testing.T) {
	// nft --debug=netlink add rule ip t c ct status dnat
	checkStmt(t, IP, Rule{CtStatus{Bits: CtDNAT}}, "ct status dnat", `
[ ct load status => reg 1 ]
[ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ]
[ cmp neq reg 1 0x00000000 ]`)
}
