package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	nft "github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/pkg/model"
)

// Registers as nft allocates them: the 16-byte NFT_REG_1 holds the first
// field and the 4-byte NFT_REG32_xx registers the following ones.
const (
	reg1     = 1
	reg2     = 2
	reg32_00 = 8
)

// nextReg is the 32-bit register after a field of n bytes that starts in reg1.
func nextReg(n int) uint32 { return reg32_00 + uint32((n+3)/4) }

func addrLen(f model.IPFamily) int {
	if f == model.IPv6 {
		return 16
	}
	return 4
}

// Header offsets of the addresses.
func saddrOffset(f model.IPFamily) uint32 {
	if f == model.IPv6 {
		return 8
	}
	return 12
}

func daddrOffset(f model.IPFamily) uint32 {
	if f == model.IPv6 {
		return 24
	}
	return 16
}

// compiler turns statements into netlink expressions for one family.
type compiler struct {
	f model.IPFamily
}

func ne32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

func (c *compiler) rule(r Rule) ([]expr.Any, error) {
	var out []expr.Any
	for _, s := range r {
		e, err := c.stmt(s)
		if err != nil {
			return nil, err
		}
		out = append(out, e...)
	}
	return out, nil
}

func (c *compiler) stmt(s Stmt) ([]expr.Any, error) {
	al := uint32(addrLen(c.f))
	switch s := s.(type) {
	case MatchServiceTuple:
		l := &expr.Lookup{SourceRegister: reg1, SetName: s.Set}
		if s.Vmap {
			l.IsDestRegSet, l.DestRegister = true, 0
		}
		protoReg := nextReg(int(al))
		return []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOffset(c.f), Len: al},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
			&expr.Payload{DestRegister: protoReg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			l,
		}, nil
	case MatchSourceDest:
		return []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset(c.f), Len: al},
			&expr.Payload{DestRegister: nextReg(int(al)), Base: expr.PayloadBaseNetworkHeader, Offset: daddrOffset(c.f), Len: al},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
		}, nil
	case MatchDestIn:
		if s.Set != "" {
			return []expr.Any{
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOffset(c.f), Len: al},
				&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
			}, nil
		}
		op := expr.CmpOpEq
		if s.Not {
			op = expr.CmpOpNeq
		}
		return prefixMatch(daddrOffset(c.f), s.Prefix, op), nil
	case MatchSourceIn:
		return prefixMatch(saddrOffset(c.f), s.Prefix, expr.CmpOpEq), nil
	case MatchFibLocal:
		fib := &expr.Fib{Register: reg1, ResultADDRTYPE: true, FlagDADDR: !s.Source, FlagSADDR: s.Source}
		return []expr.Any{fib, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ne32(unix.RTN_LOCAL)}}, nil
	case MatchProtoPort:
		l := &expr.Lookup{SourceRegister: reg1, SetName: s.Set}
		if s.Vmap {
			l.IsDestRegSet, l.DestRegister = true, 0
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Payload{DestRegister: reg32_00 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			l,
		}, nil
	case MatchSourceInSet:
		return []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset(c.f), Len: al},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Set},
		}, nil
	case UpdateSource:
		return []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset(c.f), Len: al},
			&expr.Dynset{SrcRegKey: reg1, SetName: s.Set, Operation: unix.NFT_DYNSET_OP_UPDATE},
		}, nil
	case Goto:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: s.Chain}}, nil
	case Drop:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}, nil
	case Accept:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}, nil
	case MatchCtStateNew:
		return ctBit(expr.CtKeySTATE, expr.CtStateBitNEW), nil
	case MatchCtStatusDNAT:
		return ctBit(expr.CtKeySTATUS, 0x20), nil
	case MatchMark:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: ne32(s.Mark), Xor: ne32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ne32(s.Mark)},
		}, nil
	case SetMark:
		return markRewrite(^s.Mark, s.Mark), nil
	case ClearMark:
		return markRewrite(0xffffffff, s.Mark), nil
	case MatchSourceNotIn:
		return sourceNotIn(c.f, s), nil
	case MatchL4Proto:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{protoNumber(s.Proto)}},
		}, nil
	case Masquerade:
		return []expr.Any{&expr.Masq{FullyRandom: s.FullyRandom}}, nil
	case Reject:
		code := uint8(3) // ICMP port unreachable
		if c.f == model.IPv6 {
			code = 4 // ICMPv6 port unreachable
		}
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code}}, nil
	case Jump:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: s.Chain}}, nil
	case PickOneIn:
		return []expr.Any{
			&expr.Numgen{Register: reg1, Modulus: uint32(s.N), Type: unix.NFT_NG_RANDOM},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ne32(0)},
		}, nil
	case DNAT:
		return c.dnat(s), nil
	}
	return nil, fmt.Errorf("no netlink form for statement %T", s)
}

func ctBit(key expr.CtKey, bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: key, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: ne32(bit), Xor: ne32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: ne32(0)},
	}
}

func markRewrite(mask, xor uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: ne32(mask), Xor: ne32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

func sourceNotIn(f model.IPFamily, s MatchSourceNotIn) []expr.Any {
	return prefixMatch(saddrOffset(f), s.Prefix, expr.CmpOpNeq)
}

// prefixMatch compares the address at offset with a prefix, loading only
// the prefix's whole bytes when it is byte-aligned, as nft does, and
// masking otherwise.
func prefixMatch(offset uint32, prefix netip.Prefix, op expr.CmpOp) []expr.Any {
	p := prefix.Masked()
	addr := p.Addr().AsSlice()
	bits := p.Bits()
	if bits%8 == 0 {
		n := bits / 8
		return []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(n)},
			&expr.Cmp{Op: op, Register: reg1, Data: addr[:n]},
		}
	}
	mask := make([]byte, len(addr))
	for i := range mask {
		switch {
		case bits >= 8:
			mask[i] = 0xff
			bits -= 8
		case bits > 0:
			mask[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: op, Register: reg1, Data: addr},
	}
}

func protoNumber(p model.Protocol) byte {
	switch p {
	case model.UDP:
		return unix.IPPROTO_UDP
	case model.SCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func (c *compiler) dnat(s DNAT) []expr.Any {
	family := uint32(unix.NFPROTO_IPV4)
	if c.f == model.IPv6 {
		family = unix.NFPROTO_IPV6
	}
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, s.Target.Port())
	return []expr.Any{
		&expr.Immediate{Register: reg1, Data: s.Target.Addr().AsSlice()},
		&expr.Immediate{Register: reg2, Data: port},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: reg1, RegAddrMax: reg1,
			RegProtoMin: reg2, RegProtoMax: reg2, Specified: true},
	}
}

// elementBytes encodes one element key as the kernel stores it: each field
// padded to a multiple of four bytes.
func elementBytes(fields []FieldType, vals []Value) []byte {
	var b []byte
	for i, t := range fields {
		switch t {
		case FieldAddr:
			b = append(b, vals[i].Addr.AsSlice()...)
		case FieldProto:
			b = append(b, protoNumber(vals[i].Proto), 0, 0, 0)
		case FieldPort:
			b = append(b, byte(vals[i].Port>>8), byte(vals[i].Port), 0, 0)
		}
	}
	return b
}

func setKeyType(f model.IPFamily, fields []FieldType) nft.SetDatatype {
	types := make([]nft.SetDatatype, len(fields))
	for i, t := range fields {
		switch t {
		case FieldAddr:
			types[i] = nft.TypeIPAddr
			if f == model.IPv6 {
				types[i] = nft.TypeIP6Addr
			}
		case FieldProto:
			types[i] = nft.TypeInetProto
		default:
			types[i] = nft.TypeInetService
		}
	}
	if len(types) == 1 {
		return types[0]
	}
	return nft.MustConcatSetType(types...)
}
