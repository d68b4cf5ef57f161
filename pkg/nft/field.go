package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Field is one packet field a rule reads: an address of the network
// header, the transport protocol or the transport destination port.
// Concatenated fields form a set key ("ip daddr . meta l4proto . th dport").
type Field uint8

// The fields proxyd's rules read.
const (
	IPSaddr Field = iota + 1
	IPDaddr
	IP6Saddr
	IP6Daddr
	MetaL4Proto
	THDport
)

// Saddr is the source address field of IP family f (IP or IP6).
func Saddr(f Family) Field {
	if f == IP6 {
		return IP6Saddr
	}
	return IPSaddr
}

// Daddr is the destination address field of IP family f (IP or IP6).
func Daddr(f Family) Field {
	if f == IP6 {
		return IP6Daddr
	}
	return IPDaddr
}

type fieldInfo struct {
	text   string
	typ    Type
	family Family // the network header it needs (0: none)
	offset uint32 // in the network header
}

var fields = [...]fieldInfo{
	IPSaddr:     {"ip saddr", TypeIPv4Addr, IP, 12},
	IPDaddr:     {"ip daddr", TypeIPv4Addr, IP, 16},
	IP6Saddr:    {"ip6 saddr", TypeIPv6Addr, IP6, 8},
	IP6Daddr:    {"ip6 daddr", TypeIPv6Addr, IP6, 24},
	MetaL4Proto: {"meta l4proto", TypeInetProto, 0, 0},
	THDport:     {"th dport", TypeInetService, 0, 0},
}

// info describes f; ok is false for an unknown field.
func (f Field) info() (fieldInfo, bool) {
	if f == 0 || int(f) >= len(fields) {
		return fieldInfo{}, false
	}
	return fields[f], true
}

func (f Field) String() string {
	if i, ok := f.info(); ok {
		return i.text
	}
	return fmt.Sprintf("field-%d", uint8(f))
}

// Type is the set type of the field's values.
func (f Field) Type() Type {
	i, _ := f.info()
	return i.typ
}

// isSource reports whether f is a source address.
func (f Field) isSource() bool { return f == IPSaddr || f == IP6Saddr }

func fieldsText(fs []Field) string {
	var b []byte
	for i, f := range fs {
		if i > 0 {
			b = append(b, " . "...)
		}
		b = append(b, f.String()...)
	}
	return string(b)
}

// KeyTypes are the set key types a lookup of fs needs.
func KeyTypes(fs ...Field) []Type {
	out := make([]Type, len(fs))
	for i, f := range fs {
		out[i] = f.Type()
	}
	return out
}

// load emits the expression that loads f into register reg; the caller
// checked the network family first.
func (c *compiler) load(f Field, reg uint32) error {
	i, ok := f.info()
	if !ok {
		return fmt.Errorf("unknown field %d", f)
	}
	switch f {
	case MetaL4Proto:
		c.emit(&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg})
	case THDport:
		c.emit(&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	default:
		c.emit(&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: i.offset, Len: uint32(i.typ.size())})
	}
	return nil
}

// loadKey loads a concatenation into consecutive registers from NFT_REG_1
// on, each field padded to 32 bits.
func (c *compiler) loadKey(fs []Field) error {
	if len(fs) == 0 {
		return fmt.Errorf("no fields to load")
	}
	// The family check goes first: it uses the first register.
	var fam Family
	for _, f := range fs {
		i, ok := f.info()
		if !ok {
			return fmt.Errorf("unknown field %d", f)
		}
		switch ff := i.family; {
		case ff == 0:
		case fam != 0 && ff != fam:
			return fmt.Errorf("key %s mixes IP families", fieldsText(fs))
		default:
			fam = ff
		}
	}
	if fam != 0 {
		if err := c.needNetwork(fam); err != nil {
			return fmt.Errorf("%s: %w", fieldsText(fs), err)
		}
	}
	off := 0
	for _, f := range fs {
		if err := c.load(f, regAt(off)); err != nil {
			return err
		}
		off += padded(f.Type().size())
	}
	return nil
}

// register names the register that starts off bytes into NFT_REG_1 the way
// nft does: a 128-bit register where one starts, else a 32-bit one.
func regAt(off int) uint32 {
	if unit := uint32(off / 4); unit%4 != 0 {
		return unix.NFT_REG32_00 + unit
	}
	return unix.NFT_REG_1 + uint32(off/16)
}

// fieldOf is the inverse of load: the field an expression loads, if any.
func fieldOf(e expr.Any) (Field, bool) {
	switch e := e.(type) {
	case *expr.Meta:
		if e.Key == expr.MetaKeyL4PROTO && !e.SourceRegister {
			return MetaL4Proto, true
		}
	case *expr.Payload:
		if e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2 {
			return THDport, true
		}
		if e.Base == expr.PayloadBaseNetworkHeader {
			for f, i := range fields {
				if i.family != 0 && i.offset == e.Offset && uint32(i.typ.size()) == e.Len {
					return Field(f), true
				}
			}
		}
	}
	return 0, false
}

// loadedKey reads a run of loads (after an optional network guard) from the
// start of ex: the fields a following lookup or comparison reads.
func loadedKey(ex []expr.Any) (fs []Field, n int) {
	if isGuard(ex) {
		n = 2
	}
	for ; n < len(ex); n++ {
		f, ok := fieldOf(ex[n])
		if !ok {
			break
		}
		fs = append(fs, f)
	}
	return fs, n
}

// keyThen reads a run of loads from the start of ex and the expression
// that uses them; ok is false when there is none of either.
func keyThen(ex []expr.Any) (fs []Field, next expr.Any, ok bool) {
	fs, n := loadedKey(ex)
	if len(fs) == 0 || n >= len(ex) {
		return nil, nil, false
	}
	return fs, ex[n], true
}

func (t Type) size() int {
	if int(t) >= len(types) {
		return 0
	}
	return types[t].size
}

func padded(n int) int { return (n + 3) &^ 3 }
