package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// DNATMap rewrites the destination to the address and port that a fresh
// random number below Mod maps to in Map, and ends the rule:
// "dnat ip to numgen random mod 65536 map @eps". Map is an interval map
// "typeof numgen random mod 65536 : ip daddr . tcp dport" (Family IP6 for
// ip6 addresses), one range of numbers per endpoint, so a change of
// endpoints changes elements only: the rule, and the kernel's validation
// of every rule it reaches, stay as they are. The rule needs the protocol
// matched first.
type DNATMap struct {
	Family Family // IP or IP6: the address family of the map's data
	Mod    uint32
	Map    string
}

func (s DNATMap) text(Family) string {
	return fmt.Sprintf("dnat %s to numgen random mod %d map @%s", s.Family, s.Mod, s.Map)
}

func (s DNATMap) compile(c *compiler) error {
	if (s.Family != IP && s.Family != IP6) || (c.family != INet && c.family != s.Family) || s.Mod == 0 || s.Map == "" {
		return fmt.Errorf("%s in a table of family %s", s.text(c.family), c.family)
	}
	// The map's keys are big-endian (an interval set's are), numgen's
	// result is not; the port follows the address in the registers.
	c.emit(&expr.Numgen{Register: unix.NFT_REG_1, Modulus: s.Mod, Type: unix.NFT_NG_RANDOM},
		&expr.Byteorder{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: s.Map, IsDestRegSet: true, DestRegister: unix.NFT_REG_1},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(s.Family), RegAddrMin: unix.NFT_REG_1,
			RegProtoMin: regAt(AddrType(s.Family).size())})
	return nil
}

func (s DNATMap) eval(x *exec) (step, error) {
	if err := x.canDNAT(); err != nil {
		return 0, err
	}
	m := x.t.setOf(x.table, s.Map)
	if m == nil {
		return 0, fmt.Errorf("no map %s", s.Map)
	}
	if m.Typeof == nil || m.Typeof.Family != s.Family {
		return 0, fmt.Errorf("map %s is not an endpoint map of family %s", s.Map, s.Family)
	}
	if (s.Family == IP) != x.fl.Dst.Addr().Is4() {
		return stepNext, nil // an inet table's dnat of the other family does nothing
	}
	// Numbers within one range behave alike: cut where ranges start and end.
	var cuts []uint32
	for _, e := range m.Elements {
		cuts = append(cuts, e.Key[0].num, e.Key[0].end+1)
	}
	n := x.fl.Choose(s.Mod, cuts...)
	for _, e := range m.Elements {
		if k := e.Key[0]; k.num <= n && n <= k.end {
			return x.dnat(netipAddrPort(e.Data))
		}
	}
	return stepMiss, nil // no range holds the number: the lookup fails
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if len(ex) < 4 {
			return nil
		}
		ng, ok := ex[0].(*expr.Numgen)
		l, ok2 := ex[2].(*expr.Lookup)
		nat, ok3 := ex[3].(*expr.NAT)
		if !ok || !ok2 || !ok3 {
			return nil
		}
		return DNATMap{Family: Family(nat.Family), Mod: ng.Modulus, Map: l.SetName}
	})
}
