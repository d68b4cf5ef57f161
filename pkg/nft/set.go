package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Set is a named set or map. A set has a Key; a map also has Data, which
// is either {TypeVerdict} (a verdict map: each element carries a verdict)
// or the types of a value, concatenated.
type Set struct {
	Name string
	Key  []Type
	Data []Type
	// Interval sets hold prefixes and ranges.
	Interval bool
	// Timeout > 0 gives the set the timeout flag and elements that expire
	// after it; with Dynamic, rules add elements (update statements).
	Timeout time.Duration
	Dynamic bool
	// Size bounds the number of elements (0: no bound).
	Size uint32
	// Typeof, when set, declares the key and data as nft's typeof does;
	// it prints instead of the types, which it must agree with.
	Typeof   *Typeof
	Elements []Element
}

// IsMap reports whether s maps keys to data or verdicts.
func (s *Set) IsMap() bool { return len(s.Data) > 0 }

// IsVerdictMap reports whether s maps keys to verdicts.
func (s *Set) IsVerdictMap() bool { return len(s.Data) == 1 && s.Data[0] == TypeVerdict }

// Element is one element of a set: its key, and in a map its data or, in a
// verdict map, its verdict.
type Element struct {
	Key     []Value
	Data    []Value
	Verdict Verdict
	// Timeout and Expires are what the kernel reports of an element a
	// rule added to a dynamic set: its own timeout (when it differs from
	// the set's) and the time it has left. Written elements have neither.
	Timeout, Expires time.Duration
	// Comment is the element's comment (nft's `comment "..."`), which
	// names what the element stands for where its key cannot.
	Comment string
}

// Type is the type of one field of a set's key or data.
type Type uint8

// The field types, with the kernel's datatype numbers in typeInfo.
const (
	TypeIPv4Addr Type = iota + 1
	TypeIPv6Addr
	TypeInetProto
	TypeInetService
	TypeMark
	TypeInteger
	TypeVerdict
)

type typeInfo struct {
	name  string
	magic uint32 // nft's datatype number, as the kernel stores it
	size  int    // bytes in a register
}

var types = [...]typeInfo{
	TypeIPv4Addr:    {"ipv4_addr", 7, 4},
	TypeIPv6Addr:    {"ipv6_addr", 8, 16},
	TypeInetProto:   {"inet_proto", 12, 1},
	TypeInetService: {"inet_service", 13, 2},
	TypeMark:        {"mark", 19, 4},
	TypeInteger:     {"integer", 4, 4},
	TypeVerdict:     {"verdict", 1, 16},
}

func (t Type) String() string {
	if t != 0 && int(t) < len(types) {
		return types[t].name
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// isAddr reports whether t holds IP addresses.
func (t Type) isAddr() bool { return t == TypeIPv4Addr || t == TypeIPv6Addr }

// AddrType is the address type of IP family f (IP or IP6).
func AddrType(f Family) Type {
	if f == IP6 {
		return TypeIPv6Addr
	}
	return TypeIPv4Addr
}

// Value is one field of an element: an address (a prefix or a range in an
// interval set) or a number (a protocol, port, mark or integer, a range in
// an interval set). Make one with AddrValue, PrefixValue, AddrRangeValue,
// NumValue or NumRangeValue.
type Value struct {
	addr, last netip.Addr // addresses: first and last
	num, end   uint32     // numbers: first and last
}

// AddrValue is one address.
func AddrValue(a netip.Addr) Value { return Value{addr: a, last: a} }

// PrefixValue is every address of p (interval sets only).
func PrefixValue(p netip.Prefix) Value {
	p = p.Masked()
	return Value{addr: p.Addr(), last: lastAddr(p)}
}

// AddrRangeValue is the addresses from first to last (interval sets only).
func AddrRangeValue(first, last netip.Addr) Value { return Value{addr: first, last: last} }

// NumValue is one number: a protocol, port, mark or integer.
func NumValue(n uint32) Value { return Value{num: n, end: n} }

// NumRangeValue is the numbers from first to last (interval sets only).
func NumRangeValue(first, last uint32) Value { return Value{num: first, end: last} }

// Addr is the (first) address of an address value.
func (v Value) Addr() netip.Addr { return v.addr }

// Num is the (first) number of a number value.
func (v Value) Num() uint32 { return v.num }

// IsRange reports whether v holds more than one address or number.
func (v Value) IsRange() bool { return v.addr != v.last || v.num != v.end }

// contains reports whether w (one address or number) is in v.
func (v Value) contains(w Value) bool {
	if v.addr.IsValid() {
		return w.addr.IsValid() && w.addr.BitLen() == v.addr.BitLen() && v.addr.Compare(w.addr) <= 0 && w.addr.Compare(v.last) <= 0
	}
	return !w.addr.IsValid() && v.num <= w.num && w.num <= v.end
}

// prefix returns v as a prefix if it is exactly one.
func (v Value) prefix() (netip.Prefix, bool) {
	for bits := v.addr.BitLen(); bits >= 0; bits-- {
		p := netip.PrefixFrom(v.addr, bits)
		if p.Masked() != p {
			break
		}
		if lastAddr(p) == v.last {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// text prints v as nft prints a field of type t.
func (v Value) text(t Type) string {
	if t.isAddr() {
		if v.addr == v.last {
			return v.addr.String()
		}
		if p, ok := v.prefix(); ok {
			return p.String()
		}
		return v.addr.String() + "-" + v.last.String()
	}
	one := func(n uint32) string {
		switch t {
		case TypeInetProto:
			if name, ok := protoNames[uint8(n)]; ok {
				return name
			}
		case TypeMark:
			return fmt.Sprintf("0x%08x", n)
		}
		return fmt.Sprint(n)
	}
	if v.num == v.end {
		return one(v.num)
	}
	return one(v.num) + "-" + one(v.end)
}

// protoNames are the protocol names nft prints (from /etc/protocols).
var protoNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}

// ProtoName is how nft prints protocol number p.
func ProtoName(p uint8) string { return NumValue(uint32(p)).text(TypeInetProto) }

// KeyText is the element's key as nft prints it, e.g. "10.96.0.10 . tcp . 80".
func (e Element) KeyText(s *Set) string { return valuesText(e.Key, s.Key) }

func valuesText(vals []Value, ts []Type) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		t := TypeInteger
		if i < len(ts) {
			t = ts[i]
		}
		parts[i] = v.text(t)
	}
	return strings.Join(parts, " . ")
}

// Text is the element as nft prints it in s: its key and, in a map, its
// data or verdict.
func (e Element) Text(s *Set) string {
	k := e.KeyText(s)
	if e.Timeout > 0 {
		k += " timeout " + Duration(e.Timeout)
	}
	if e.Expires > 0 {
		k += " expires " + Duration(e.Expires)
	}
	if e.Comment != "" {
		k += fmt.Sprintf(" comment %q", e.Comment)
	}
	switch {
	case s.IsVerdictMap():
		return k + " : " + e.Verdict.text(0)
	case s.IsMap():
		return k + " : " + valuesText(e.Data, s.Data)
	}
	return k
}

// check reports a set whose typeof does not fit its types.
func (s *Set) check() error {
	if s.Typeof == nil {
		return nil
	}
	key, data := s.Typeof.types()
	if typesText(s.Key) != typesText(key) || typesText(s.Data) != typesText(data) || s.Interval == s.Typeof.Dest {
		kind := "an interval map"
		if s.Typeof.Dest {
			kind = "a map without intervals"
		}
		return fmt.Errorf("set %s: %s needs %s of type %s : %s", s.Name, s.Typeof.text(), kind, typesText(key), typesText(data))
	}
	return nil
}

// checkElement reports an element that does not fit s.
func (s *Set) checkElement(e Element) error {
	if len(e.Key) != len(s.Key) {
		return fmt.Errorf("set %s: element %s has %d key fields, want %d", s.Name, e.Text(s), len(e.Key), len(s.Key))
	}
	for i, v := range e.Key {
		if err := v.check(s.Key[i]); err != nil {
			return fmt.Errorf("set %s: element %s: %w", s.Name, e.Text(s), err)
		}
		if v.IsRange() && !s.Interval {
			return fmt.Errorf("set %s: element %s has a range but the set has no interval flag", s.Name, e.Text(s))
		}
		if v.addr.IsValid() && s.Interval && len(s.Key) == 1 {
			return fmt.Errorf("set %s: intervals of one address field are not supported", s.Name)
		}
	}
	switch {
	case s.IsVerdictMap():
		if e.Verdict.Kind == 0 || len(e.Data) > 0 {
			return fmt.Errorf("verdict map %s: element %s needs a verdict and no data", s.Name, e.KeyText(s))
		}
	case s.IsMap():
		if len(e.Data) != len(s.Data) || e.Verdict.Kind != 0 {
			return fmt.Errorf("map %s: element %s has %d data fields, want %d", s.Name, e.KeyText(s), len(e.Data), len(s.Data))
		}
		for i, v := range e.Data {
			if err := v.check(s.Data[i]); err != nil || v.IsRange() {
				return fmt.Errorf("map %s: element %s: bad data field %d", s.Name, e.KeyText(s), i)
			}
		}
	default:
		if len(e.Data) > 0 || e.Verdict.Kind != 0 {
			return fmt.Errorf("set %s: element %s carries data", s.Name, e.KeyText(s))
		}
	}
	return nil
}

func (v Value) check(t Type) error {
	switch t {
	case TypeIPv4Addr, TypeIPv6Addr:
		if !v.addr.IsValid() || !v.last.IsValid() || (t == TypeIPv4Addr) != v.addr.Is4() || (t == TypeIPv4Addr) != v.last.Is4() || v.last.Less(v.addr) {
			return fmt.Errorf("%s is not an %s", v.text(t), t)
		}
		return nil
	case TypeInetProto:
		if v.end > 0xff {
			return fmt.Errorf("%d is not a protocol number", v.end)
		}
	case TypeInetService:
		if v.end > 0xffff {
			return fmt.Errorf("%d is not a port", v.end)
		}
	}
	if v.addr.IsValid() || v.end < v.num {
		return fmt.Errorf("%s is not a %s", v.text(t), t)
	}
	return nil
}

// compareElements orders elements by key, field by field.
func compareElements(a, b Element) int {
	for i := range min(len(a.Key), len(b.Key)) {
		if c := compareValues(a.Key[i], b.Key[i]); c != 0 {
			return c
		}
	}
	return len(a.Key) - len(b.Key)
}

func compareValues(a, b Value) int {
	if c := a.addr.Compare(b.addr); c != 0 {
		return c
	}
	if c := a.last.Compare(b.last); c != 0 {
		return c
	}
	switch {
	case a.num != b.num:
		return cmpU32(a.num, b.num)
	default:
		return cmpU32(a.end, b.end)
	}
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// SortElements sorts s's elements by key, the order Canonical uses.
func (s *Set) SortElements() { slices.SortStableFunc(s.Elements, compareElements) }

// CompareElements orders elements by key, field by field: the order
// SortElements gives.
func CompareElements(a, b Element) int { return compareElements(a, b) }

// netipAddrPort is an endpoint map's data, address . port, as an AddrPort.
func netipAddrPort(data []Value) netip.AddrPort {
	if len(data) != 2 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(data[0].addr, uint16(data[1].num))
}

// NumEnd is the last number of a number value (Num, unless a range).
func (v Value) NumEnd() uint32 { return v.end }
