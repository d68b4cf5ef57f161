package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rawSet is a set as the kernel describes it.
type rawSet struct {
	name                string
	flags               uint32
	keyType, keyLen     uint32
	dataType, dataLen   uint32
	timeout             time.Duration
	size                uint32
	fieldLens           []uint32
	userdata            []byte
	hasData, hasTimeout bool
}

func (r *Reader) sets(f Family, table string) ([]*Set, error) {
	msgs, err := r.request(unix.NFT_MSG_GETSET, netlink.Dump, f, []netlink.Attribute{{Type: unix.NFTA_SET_TABLE, Data: cstring(table)}})
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	var out []*Set
	for _, m := range msgs {
		var rs rawSet
		err := attrs(m.Data[4:], func(typ uint16, ad *netlink.AttributeDecoder) error {
			switch typ {
			case unix.NFTA_SET_NAME:
				rs.name = ad.String()
			case unix.NFTA_SET_FLAGS:
				rs.flags = ad.Uint32()
			case unix.NFTA_SET_KEY_TYPE:
				rs.keyType = ad.Uint32()
			case unix.NFTA_SET_KEY_LEN:
				rs.keyLen = ad.Uint32()
			case unix.NFTA_SET_DATA_TYPE:
				rs.dataType, rs.hasData = ad.Uint32(), true
			case unix.NFTA_SET_DATA_LEN:
				rs.dataLen = ad.Uint32()
			case unix.NFTA_SET_TIMEOUT:
				rs.timeout, rs.hasTimeout = time.Duration(ad.Uint64())*time.Millisecond, true
			case unix.NFTA_SET_USERDATA:
				rs.userdata = ad.Bytes()
			case unix.NFTA_SET_DESC:
				return attrs(ad.Bytes(), func(typ uint16, ad *netlink.AttributeDecoder) error {
					switch typ {
					case unix.NFTA_SET_DESC_SIZE:
						rs.size = ad.Uint32()
					case attrSetDescConcat:
						return attrs(ad.Bytes(), func(_ uint16, ad *netlink.AttributeDecoder) error {
							return attrs(ad.Bytes(), func(typ uint16, ad *netlink.AttributeDecoder) error {
								if typ == attrSetFieldLen {
									rs.fieldLens = append(rs.fieldLens, ad.Uint32())
								}
								return nil
							})
						})
					}
					return nil
				})
			case attrSetExpr, attrSetExprs:
				return errors.New("set expressions (counters?): proxyd writes none")
			case unix.NFTA_SET_OBJ_TYPE:
				return errors.New("an object map: proxyd writes none")
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", rs.name, err)
		}
		s, err := rs.set()
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", rs.name, err)
		}
		if s.Elements, err = r.elements(f, table, s); err != nil {
			return nil, fmt.Errorf("set %s: %w", rs.name, err)
		}
		out = append(out, s)
	}
	return out, nil
}

var typesByMagic = map[uint32]Type{}

func init() {
	for t, i := range types {
		if t != 0 {
			typesByMagic[i.magic] = Type(t)
		}
	}
}

// splitTypes reads a concatenated datatype: 6 bits a type, the last field
// in the lowest bits.
func splitTypes(magic uint32) ([]Type, error) {
	var out []Type
	for ; magic != 0; magic >>= 6 {
		t, ok := typesByMagic[magic&0x3f]
		if !ok || t == TypeVerdict {
			return nil, fmt.Errorf("datatype %d, which proxyd never writes", magic&0x3f)
		}
		out = append([]Type{t}, out...)
	}
	if len(out) == 0 {
		return nil, errors.New("no datatype")
	}
	return out, nil
}

func keyLen(ts []Type) uint32 {
	if len(ts) == 1 {
		return uint32(ts[0].size())
	}
	n := 0
	for _, t := range ts {
		n += padded(t.size())
	}
	return uint32(n)
}

// set turns what the kernel said into a Set, and checks that it is exactly
// what writing that Set sends: flags, lengths and userdata.
func (rs rawSet) set() (*Set, error) {
	const known = unix.NFT_SET_INTERVAL | unix.NFT_SET_MAP | unix.NFT_SET_TIMEOUT | unix.NFT_SET_EVAL | setFlagConcat
	if extra := rs.flags &^ known; extra != 0 {
		return nil, fmt.Errorf("flags 0x%x (anonymous, constant or object sets): proxyd writes none", extra)
	}
	s := &Set{Name: rs.name, Interval: rs.flags&unix.NFT_SET_INTERVAL != 0, Dynamic: rs.flags&unix.NFT_SET_EVAL != 0, Size: rs.size}
	var err error
	if s.Key, err = splitTypes(rs.keyType); err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	if rs.keyLen != keyLen(s.Key) {
		return nil, fmt.Errorf("key length %d, want %d for %s", rs.keyLen, keyLen(s.Key), typesText(s.Key))
	}
	if concat := len(s.Key) > 1; concat != (rs.flags&setFlagConcat != 0) {
		return nil, fmt.Errorf("concatenation flag does not fit key %s", typesText(s.Key))
	}
	if len(s.Key) > 1 {
		if len(rs.fieldLens) != len(s.Key) {
			return nil, fmt.Errorf("%d field lengths for key %s", len(rs.fieldLens), typesText(s.Key))
		}
		for i, t := range s.Key {
			if rs.fieldLens[i] != uint32(t.size()) {
				return nil, fmt.Errorf("field %d has length %d, want %d", i, rs.fieldLens[i], t.size())
			}
		}
	}
	if isMap := rs.flags&unix.NFT_SET_MAP != 0; isMap != rs.hasData {
		return nil, errors.New("map flag and data type disagree")
	}
	switch {
	case rs.hasData && rs.dataType == unix.NFT_DATA_VERDICT:
		s.Data = []Type{TypeVerdict}
	case rs.hasData:
		if s.Data, err = splitTypes(rs.dataType); err != nil {
			return nil, fmt.Errorf("data: %w", err)
		}
		if rs.dataLen != keyLen(s.Data) {
			return nil, fmt.Errorf("data length %d, want %d for %s", rs.dataLen, keyLen(s.Data), typesText(s.Data))
		}
	}
	if rs.flags&unix.NFT_SET_TIMEOUT != 0 {
		if !rs.hasTimeout || rs.timeout <= 0 {
			return nil, errors.New("timeout flag without a default timeout: proxyd writes none")
		}
		s.Timeout = rs.timeout
	}
	if t, ok := parseTypeof(rs.userdata); ok {
		s.Typeof = t
		if err := s.check(); err != nil {
			return nil, err
		}
	}
	if want, err := setUserdata(s); err != nil || !bytes.Equal(rs.userdata, want) {
		return nil, fmt.Errorf("userdata %x, want %x (a comment?)", rs.userdata, want)
	}
	return s, nil
}

// setUserdata is the userdata written for s: its typeof declaration, or
// the key byte order, big-endian for interval sets and host for a key of
// one host-order field (which nft otherwise prints byte-swapped).
func setUserdata(s *Set) ([]byte, error) {
	switch {
	case s.Typeof != nil:
		return s.Typeof.userdata()
	case s.Interval:
		return userdata.AppendUint32(nil, userdata.NFTNL_UDATA_SET_KEYBYTEORDER, 2), nil
	case hostOrderKey(s):
		return userdata.AppendUint32(nil, userdata.NFTNL_UDATA_SET_KEYBYTEORDER, 1), nil
	}
	return nil, nil
}

// hostOrderKey reports whether s has a key of one field kept in host byte
// order (a mark or an integer).
func hostOrderKey(s *Set) bool {
	return !s.Interval && len(s.Key) == 1 && (s.Key[0] == TypeMark || s.Key[0] == TypeInteger)
}

func (r *Reader) elements(f Family, table string, s *Set) ([]Element, error) {
	msgs, err := r.request(unix.NFT_MSG_GETSETELEM, netlink.Dump, f, []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstring(table)},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstring(s.Name)},
	})
	if err != nil {
		return nil, fmt.Errorf("list elements: %w", err)
	}
	var raw []rawElement
	for _, m := range msgs {
		err := attrs(m.Data[4:], func(typ uint16, ad *netlink.AttributeDecoder) error {
			if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				return nil
			}
			return attrs(ad.Bytes(), func(_ uint16, ad *netlink.AttributeDecoder) error {
				e, err := parseElement(ad.Bytes())
				if err != nil {
					return fmt.Errorf("element %d: %w", len(raw), err)
				}
				raw = append(raw, e)
				return nil
			})
		})
		if err != nil {
			return nil, err
		}
	}
	if s.Interval && len(s.Key) == 1 {
		return s.intervals(raw)
	}
	out := make([]Element, 0, len(raw))
	for i, re := range raw {
		if re.end {
			return nil, fmt.Errorf("element %d: an interval end in a set that has none", i)
		}
		e, err := s.element(re)
		if err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// rawElement is one element as the kernel dumps it.
type rawElement struct {
	key, keyEnd, data []byte
	verdict           Verdict
	end               bool // an interval's end
	timeout, expires  time.Duration
	comment           string
}

func parseElement(b []byte) (rawElement, error) {
	var e rawElement
	err := attrs(b, func(typ uint16, ad *netlink.AttributeDecoder) error {
		switch typ {
		case unix.NFTA_SET_ELEM_KEY, attrElemKeyEnd:
			v, err := dataValue(ad.Bytes())
			if typ == attrElemKeyEnd {
				e.keyEnd = v
			} else {
				e.key = v
			}
			return err
		case unix.NFTA_SET_ELEM_DATA:
			return attrs(ad.Bytes(), func(typ uint16, ad *netlink.AttributeDecoder) error {
				switch typ {
				case unix.NFTA_DATA_VALUE:
					e.data = ad.Bytes()
				case unix.NFTA_DATA_VERDICT:
					v, err := verdictData(ad.Bytes())
					e.verdict = v
					return err
				}
				return nil
			})
		case unix.NFTA_SET_ELEM_FLAGS:
			flags := ad.Uint32()
			if flags&^unix.NFT_SET_ELEM_INTERVAL_END != 0 {
				return fmt.Errorf("element flags 0x%x: proxyd writes none", flags)
			}
			e.end = flags != 0
		case unix.NFTA_SET_ELEM_TIMEOUT:
			e.timeout = time.Duration(ad.Uint64()) * time.Millisecond
		case unix.NFTA_SET_ELEM_EXPIRATION:
			e.expires = time.Duration(ad.Uint64()) * time.Millisecond
		case unix.NFTA_SET_ELEM_USERDATA:
			ud := ad.Bytes()
			c, ok := userdata.GetString(ud, userdata.NFTNL_UDATA_SET_ELEM_COMMENT)
			if !ok || !bytes.Equal(userdata.AppendString(nil, userdata.NFTNL_UDATA_SET_ELEM_COMMENT, c), ud) {
				return fmt.Errorf("element userdata %x: proxyd writes a comment only", ud)
			}
			e.comment = c
		case unix.NFTA_SET_ELEM_EXPR, attrElemExprs:
			return errors.New("element expressions (counters?): proxyd writes none")
		}
		return nil
	})
	return e, err
}

// element decodes one element of a set that is not an interval set of one
// field.
func (s *Set) element(re rawElement) (Element, error) {
	e := Element{Verdict: re.verdict, Timeout: re.timeout, Expires: re.expires, Comment: re.comment}
	var err error
	if e.Key, err = decode(s.Key, re.key, re.keyEnd); err != nil {
		return Element{}, fmt.Errorf("key: %w", err)
	}
	if s.IsMap() && !s.IsVerdictMap() {
		if e.Data, err = decode(s.Data, re.data, nil); err != nil {
			return Element{}, fmt.Errorf("data: %w", err)
		}
	}
	if err := s.checkElement(e); err != nil {
		return Element{}, err
	}
	return e, nil
}

// intervals pairs the start and end elements of an interval set of one
// field (a number) into ranges: each start runs to the next end or start,
// or to the largest number.
func (s *Set) intervals(raw []rawElement) ([]Element, error) {
	size := s.Key[0].size()
	num := func(b []byte) (uint32, error) {
		if len(b) != size {
			return 0, fmt.Errorf("%d key bytes for %s", len(b), s.Key[0])
		}
		var n uint32
		for _, c := range b {
			n = n<<8 | uint32(c)
		}
		return n, nil
	}
	type point struct {
		n uint32
		e rawElement
	}
	var points []point
	for i, re := range raw {
		n, err := num(re.key)
		if err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
		points = append(points, point{n, re})
	}
	// By number, an end before a start at the same number.
	slices.SortFunc(points, func(a, b point) int {
		if a.n != b.n {
			return cmpU32(a.n, b.n)
		}
		return cmpBool(b.e.end, a.e.end)
	})
	var out []Element
	for i, p := range points {
		if p.e.end {
			continue
		}
		last := uint32(uint64(1)<<(8*size) - 1)
		if i+1 < len(points) {
			last = points[i+1].n - 1
		}
		e := Element{Key: []Value{NumRangeValue(p.n, last)}, Verdict: p.e.verdict, Timeout: p.e.timeout, Expires: p.e.expires}
		if s.IsMap() && !s.IsVerdictMap() {
			var err error
			if e.Data, err = decode(s.Data, p.e.data, nil); err != nil {
				return nil, fmt.Errorf("data: %w", err)
			}
		}
		if err := s.checkElement(e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func dataValue(b []byte) ([]byte, error) {
	var v []byte
	err := attrs(b, func(typ uint16, ad *netlink.AttributeDecoder) error {
		if typ == unix.NFTA_DATA_VALUE {
			v = ad.Bytes()
		}
		return nil
	})
	return v, err
}

func verdictData(b []byte) (Verdict, error) {
	var code int32
	var chain string
	err := attrs(b, func(typ uint16, ad *netlink.AttributeDecoder) error {
		switch typ {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
		return nil
	})
	if err != nil {
		return Verdict{}, err
	}
	kinds := map[int32]VerdictKind{nfAccept: VerdictAccept, nfDrop: VerdictDrop,
		unix.NFT_JUMP: VerdictJump, unix.NFT_GOTO: VerdictGoto, unix.NFT_RETURN: VerdictReturn}
	k, ok := kinds[code]
	if !ok {
		return Verdict{}, fmt.Errorf("verdict code %d", code)
	}
	return Verdict{Kind: k, Chain: chain}, nil
}

// decode is the inverse of encode: the values of ts laid out in b, with
// ranges up to the values in end (interval sets).
func decode(ts []Type, b, end []byte) ([]Value, error) {
	if len(b) != int(keyLen(ts)) || (end != nil && len(end) != len(b)) {
		return nil, fmt.Errorf("%d bytes for %s", len(b), typesText(ts))
	}
	one := func(t Type, b []byte) (netip.Addr, uint32) {
		switch t {
		case TypeIPv4Addr, TypeIPv6Addr:
			a, _ := netip.AddrFromSlice(b[:t.size()])
			return a, 0
		case TypeInetProto:
			return netip.Addr{}, uint32(b[0])
		case TypeInetService:
			return netip.Addr{}, uint32(binary.BigEndian.Uint16(b))
		}
		return netip.Addr{}, binaryutil.NativeEndian.Uint32(b)
	}
	var out []Value
	off := 0
	for _, t := range ts {
		a, n := one(t, b[off:])
		v := Value{addr: a, last: a, num: n, end: n}
		if end != nil {
			v.last, v.end = one(t, end[off:])
		}
		out = append(out, v)
		if len(ts) > 1 {
			off += padded(t.size())
		}
	}
	return out, nil
}
