package nft

import (
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// AddrIn matches an address field inside Prefix, or with Not outside it; a
// one-address prefix prints as the address: "ip saddr != 10.244.0.0/16",
// "ip daddr 10.88.0.2".
type AddrIn struct {
	Field  Field
	Prefix netip.Prefix
	Not    bool
}

func (s AddrIn) text(Family) string {
	op := ""
	if s.Not {
		op = "!= "
	}
	p := s.Prefix.Masked()
	v := p.String()
	if p.IsSingleIP() {
		v = p.Addr().String()
	}
	return s.Field.String() + " " + op + v
}

func (s AddrIn) compile(c *compiler) error {
	i, ok := s.Field.info()
	p := s.Prefix.Masked()
	if !ok || !i.typ.isAddr() {
		return fmt.Errorf("%s is not an address field", s.Field)
	}
	if !p.IsValid() || (i.typ == TypeIPv4Addr) != p.Addr().Is4() || p.Bits() == 0 {
		return fmt.Errorf("prefix %s does not fit %s", s.Prefix, s.Field)
	}
	if err := c.needNetwork(i.family); err != nil {
		return err
	}
	op := expr.CmpOpEq
	if s.Not {
		op = expr.CmpOpNeq
	}
	addr := p.Addr().AsSlice()
	// A byte-aligned prefix loads only its bytes, as nft does; others
	// load the address and mask it.
	if p.Bits()%8 == 0 {
		n := p.Bits() / 8
		c.emit(&expr.Payload{DestRegister: unix.NFT_REG_1, Base: expr.PayloadBaseNetworkHeader, Offset: i.offset, Len: uint32(n)},
			&expr.Cmp{Op: op, Register: unix.NFT_REG_1, Data: addr[:n]})
		return nil
	}
	mask := make([]byte, len(addr))
	for b := range p.Bits() {
		mask[b/8] |= 0x80 >> (b % 8)
	}
	c.emit(&expr.Payload{DestRegister: unix.NFT_REG_1, Base: expr.PayloadBaseNetworkHeader, Offset: i.offset, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: op, Register: unix.NFT_REG_1, Data: addr})
	return nil
}

func (s AddrIn) eval(x *exec) (step, error) {
	v, ok := x.field(s.Field)
	if !ok || s.Prefix.Masked().Contains(v.Addr()) == s.Not {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if isGuard(ex) {
			ex = ex[2:]
		}
		if len(ex) < 2 {
			return nil
		}
		p, ok := ex[0].(*expr.Payload)
		if !ok || p.Base != expr.PayloadBaseNetworkHeader {
			return nil
		}
		var f Field
		for k, i := range fields {
			if i.family != 0 && i.offset == p.Offset {
				f = Field(k)
			}
		}
		if f == 0 {
			return nil
		}
		size := f.Type().size()
		cmp, ok := ex[1].(*expr.Cmp)
		bits := len(cmpData(cmp)) * 8
		if bw, isMask := ex[1].(*expr.Bitwise); isMask && len(ex) > 2 {
			cmp, ok = ex[2].(*expr.Cmp)
			bits = leadingOnes(bw.Mask)
		}
		if !ok || (cmp.Op != expr.CmpOpEq && cmp.Op != expr.CmpOpNeq) || len(cmp.Data) > size {
			return nil
		}
		a, ok := netip.AddrFromSlice(append(append([]byte(nil), cmp.Data...), make([]byte, size-len(cmp.Data))...))
		if !ok || bits > a.BitLen() {
			return nil
		}
		return AddrIn{Field: f, Prefix: netip.PrefixFrom(a, bits), Not: cmp.Op == expr.CmpOpNeq}
	})
}

func cmpData(c *expr.Cmp) []byte {
	if c == nil {
		return nil
	}
	return c.Data
}

func leadingOnes(mask []byte) int {
	n := 0
	for _, b := range mask {
		n += bits.LeadingZeros8(^b)
		if b != 0xff {
			break
		}
	}
	return n
}
