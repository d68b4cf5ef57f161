package nft

import (
	"net/netip"
	"testing"
)

func TestDNAT(t *testing.T) {
	ap := netip.MustParseAddrPort
	// nft --debug=netlink add rule ip t n meta l4proto tcp dnat to 10.244.1.11:8080
	checkStmt(t, IP, Rule{Proto{Proto: 6}, DNAT{To: ap("10.244.1.11:8080")}}, "meta l4proto tcp dnat to 10.244.1.11:8080", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]
[ immediate reg 1 0x0b01f40a ]
[ immediate reg 2 0x0000901f ]
[ nat dnat ip addr_min reg 1 proto_min reg 2 flags 0x2 ]`)
	// nft --debug=netlink add rule inet i n meta l4proto tcp dnat ip to 10.96.0.81:80
	checkStmt(t, INet, Rule{Proto{Proto: 6}, DNAT{To: ap("10.96.0.81:80")}}, "meta l4proto tcp dnat ip to 10.96.0.81:80", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]
[ immediate reg 1 0x5100600a ]
[ immediate reg 2 0x00005000 ]
[ nat dnat ip addr_min reg 1 proto_min reg 2 flags 0x2 ]`)
	// nft --debug=netlink add rule ip6 t6 n meta l4proto tcp dnat to [fd00::1]:8080
	checkStmt(t, IP6, Rule{Proto{Proto: 6}, DNAT{To: ap("[fd00::1]:8080")}}, "meta l4proto tcp dnat to [fd00::1]:8080", `
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]
[ immediate reg 1 0x000000fd 0x00000000 0x00000000 0x01000000 ]
[ immediate reg 2 0x0000901f ]
[ nat dnat ip6 addr_min reg 1 proto_min reg 2 flags 0x2 ]`)
	// nft --debug=netlink add rule inet i c ip daddr 10.88.0.2 tcp dport 30081 ip saddr 10.244.0.0/16 dnat ip to 10.96.0.81:80
	checkStmt(t, INet, Rule{AddrIn{Field: IPDaddr, Prefix: netip.MustParsePrefix("10.88.0.2/32")}, DPort{Proto: 6, Port: 30081},
		AddrIn{Field: IPSaddr, Prefix: netip.MustParsePrefix("10.244.0.0/16")}, DNAT{To: ap("10.96.0.81:80")}},
		"ip daddr 10.88.0.2 tcp dport 30081 ip saddr 10.244.0.0/16 dnat ip to 10.96.0.81:80", `
[ meta load nfproto => reg 1 ]
[ cmp eq reg 1 0x00000002 ]
[ payload load 4b @ network header + 16 => reg 1 ]
[ cmp eq reg 1 0x0200580a ]
[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000006 ]
[ payload load 2b @ transport header + 2 => reg 1 ]
[ cmp eq reg 1 0x00008175 ]
[ payload load 2b @ network header + 12 => reg 1 ]
[ cmp eq reg 1 0x0000f40a ]
[ immediate reg 1 0x5100600a ]
[ immediate reg 2 0x00005000 ]
[ nat dnat ip addr_min reg 1 proto_min reg 2 flags 0x2 ]`)
}
