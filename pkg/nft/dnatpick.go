package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// DNATPick rewrites the destination to the endpoint that the packet's
// destination address and port, with a fresh random number below Mod, map
// to in Map: "dnat ip to ip daddr . tcp dport . numgen random mod 3 map
// @eps". Map is the one hash map of a protocol ("typeof ip daddr . tcp
// dport . numgen random mod N : ip daddr . tcp dport", Typeof.Dest) whose
// elements are every service port's endpoints by index, so one such rule
// serves every service port of Mod endpoints: a change of endpoints changes
// elements, and a service port that changes its number of endpoints
// changes the verdict of its dispatch element. The statement matches the
// protocol itself (nft lists that dependency implied by "tcp dport").
type DNATPick struct {
	Family Family // IP or IP6
	Proto  uint8
	Mod    uint32
	Map    string
}

func (s DNATPick) text(Family) string {
	return fmt.Sprintf("dnat %s to %s daddr . %s dport . numgen random mod %d map @%s", s.Family, s.Family, ProtoName(s.Proto), s.Mod, s.Map)
}

func (s DNATPick) compile(c *compiler) error {
	if (s.Family != IP && s.Family != IP6) || c.family != s.Family || s.Mod == 0 || s.Map == "" {
		return fmt.Errorf("%s in a table of family %s", s.text(c.family), c.family)
	}
	if _, ok := typeofTransport[s.Proto]; !ok {
		return fmt.Errorf("%s: no port for protocol %d", s.text(c.family), s.Proto)
	}
	c.emit(&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: unix.NFT_REG_1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{s.Proto}})
	if err := c.loadKey([]Field{Daddr(s.Family), THDport}); err != nil {
		return err
	}
	addr := padded(AddrType(s.Family).size())
	c.emit(&expr.Numgen{Register: regAt(addr + 4), Modulus: s.Mod, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: s.Map, IsDestRegSet: true, DestRegister: unix.NFT_REG_1},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(s.Family), RegAddrMin: unix.NFT_REG_1, RegProtoMin: regAt(addr)})
	return nil
}

func (s DNATPick) eval(x *exec) (step, error) {
	if err := x.canDNAT(); err != nil {
		return 0, err
	}
	m := x.t.setOf(x.table, s.Map)
	if m == nil {
		return 0, fmt.Errorf("no map %s", s.Map)
	}
	if m.Typeof == nil || !m.Typeof.Dest || m.Typeof.Family != s.Family {
		return 0, fmt.Errorf("map %s is not a destination-keyed endpoint map of family %s", s.Map, s.Family)
	}
	if x.fl.Proto != s.Proto {
		return stepMiss, nil
	}
	cuts := make([]uint32, 0, s.Mod+1)
	for i := range s.Mod + 1 {
		cuts = append(cuts, i)
	}
	n := x.fl.Choose(s.Mod, cuts...)
	for _, e := range m.Elements {
		if e.Key[0].addr == x.fl.Dst.Addr() && e.Key[1].num == uint32(x.fl.Dst.Port()) && e.Key[2].num == n {
			return x.dnat(netipAddrPort(e.Data))
		}
	}
	return stepMiss, nil // no element for the number: the lookup fails
}

func init() {
	decodes(func(f Family, ex []expr.Any) Stmt {
		if len(ex) < 7 {
			return nil
		}
		cmp, ok := ex[1].(*expr.Cmp)
		ng, ok2 := ex[4].(*expr.Numgen)
		l, ok3 := ex[5].(*expr.Lookup)
		nat, ok4 := ex[6].(*expr.NAT)
		if !ok || !ok2 || !ok3 || !ok4 || len(cmp.Data) != 1 {
			return nil
		}
		return DNATPick{Family: Family(nat.Family), Proto: cmp.Data[0], Mod: ng.Modulus, Map: l.SetName}
	})
}
