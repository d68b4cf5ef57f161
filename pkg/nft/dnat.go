package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// DNAT rewrites the destination to To and ends the rule: "dnat to
// 10.244.1.11:8080", in an inet table "dnat ip to 10.96.0.81:80". A port
// needs the protocol matched first in the same rule (nft refuses it
// otherwise), which the compiler leaves to the rule's author.
type DNAT struct{ To netip.AddrPort }

func (s DNAT) text(f Family) string {
	to := s.To.String()
	if f == INet {
		return "dnat " + ipWord(s.To.Addr()) + " to " + to
	}
	return "dnat to " + to
}

func ipWord(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}

func (s DNAT) compile(c *compiler) error {
	a := s.To.Addr()
	fam := IP
	if a.Is6() {
		fam = IP6
	}
	if !s.To.IsValid() || a.Is4In6() || (c.family != INet && c.family != fam) {
		return fmt.Errorf("cannot DNAT to %v in a table of family %s", s.To, c.family)
	}
	c.emit(&expr.Immediate{Register: unix.NFT_REG_1, Data: a.AsSlice()},
		&expr.Immediate{Register: unix.NFT_REG_2, Data: binary.BigEndian.AppendUint16(nil, s.To.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(fam), RegAddrMin: unix.NFT_REG_1, RegProtoMin: unix.NFT_REG_2, Specified: true})
	return nil
}

func (s DNAT) eval(x *exec) (step, error) {
	if err := x.canDNAT(); err != nil {
		return 0, err
	}
	if s.To.Addr().Is4() != x.fl.Dst.Addr().Is4() {
		return stepNext, nil // an inet table's dnat of the other family does nothing
	}
	return x.dnat(s.To)
}

// canDNAT reports a dnat where the kernel refuses one.
func (x *exec) canDNAT() error {
	if !x.natChain || (x.hook != Prerouting && x.hook != Output) {
		return fmt.Errorf("dnat outside a NAT chain of prerouting or output")
	}
	return nil
}

// dnat rewrites the destination to to, as the kernel's NAT does, and ends
// the chain's evaluation with accept.
func (x *exec) dnat(to netip.AddrPort) (step, error) {
	x.fl.Redirect(to)
	x.fl.ctDNAT, x.fl.dnatBound = true, true
	return x.end(Accept)
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if len(ex) < 3 {
			return nil
		}
		addr, ok := ex[0].(*expr.Immediate)
		port, ok2 := ex[1].(*expr.Immediate)
		if _, ok3 := ex[2].(*expr.NAT); !ok || !ok2 || !ok3 || len(port.Data) != 2 {
			return nil
		}
		a, ok := netip.AddrFromSlice(addr.Data)
		if !ok {
			return nil
		}
		return DNAT{To: netip.AddrPortFrom(a, binary.BigEndian.Uint16(port.Data))}
	})
}
