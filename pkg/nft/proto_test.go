package nft

import "testing"

func TestProto(t *testing.T) {
	// nft --debug=netlink add rule ip t c meta l4proto tcp
	checkStmt(t, IP, Rule{Proto{Proto: 6}}, "meta l4proto tcp", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]`)
}

func TestDPort(t *testing.T) {
	// nft --debug=netlink add rule ip t c tcp dport 30081
	checkStmt(t, IP, Rule{DPort{Proto: 6, Port: 30081}}, "tcp dport 30081", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]
[ payload load 2b @ transport header + 2 => reg 1 ]
[ cmp eq reg 1 0x00008175 ]`)
	// A protocol match followed by a port match stays two statements.
	checkStmt(t, IP, Rule{Proto{Proto: 17}, DPort{Proto: 17, Port: 53}}, "meta l4proto udp udp dport 53", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000011 ]
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000011 ]
[ payload load 2b @ transport header + 2 => reg 1 ]
[ cmp eq reg 1 0x00003500 ]`)
}
