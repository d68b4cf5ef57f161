package nft

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Typeof is a map's typeof declaration, which nft keeps in the set's
// userdata: "typeof numgen random mod Mod : ip daddr . tcp dport" (ip6
// for Family IP6; tcp, udp or sctp for Proto). nft needs it to print and
// to reload a map keyed by an integer, such as the endpoint maps proxyd
// picks a connection's endpoint from; a map with it has key TypeInteger
// and data AddrType(Family) . TypeInetService. (Mod is a label: the rule's
// own numgen decides the numbers.)
//
// With Dest the key is the destination address and port before the
// number, "typeof ip daddr . tcp dport . numgen random mod Mod : ip daddr .
// tcp dport": one hash map holds the endpoints of every service port of a
// protocol, keyed by the service's address, port and endpoint index (see
// DNATPick); its key is AddrType(Family) . TypeInetService . TypeInteger.
type Typeof struct {
	Mod    uint32
	Family Family
	Proto  uint8
	Dest   bool
}

func (t *Typeof) text() string {
	data := fmt.Sprintf("%s daddr . %s dport", t.Family, ProtoName(t.Proto))
	if t.Dest {
		return fmt.Sprintf("typeof %s . numgen random mod %d : %s", data, t.Mod, data)
	}
	return fmt.Sprintf("typeof numgen random mod %d : %s", t.Mod, data)
}

// types are the key and data types of a map with this typeof.
func (t *Typeof) types() (key, data []Type) {
	data = []Type{AddrType(t.Family), TypeInetService}
	if t.Dest {
		return []Type{AddrType(t.Family), TypeInetService, TypeInteger}, data
	}
	return []Type{TypeInteger}, data
}

// nft's identifiers (src/expression.c, src/proto.c): the expression kinds
// and protocol descriptions a typeof names.
const (
	udataKeyByteorder  = 0
	udataDataByteorder = 1
	udataKeyTypeof     = 3
	udataDataTypeof    = 4
	udataDataInterval  = 6

	exprPayload = 7
	exprConcat  = 13
	exprNumgen  = 23
)

var (
	// protocol header descriptions and their daddr or dport field
	typeofNetwork   = map[Family][2]uint32{IP: {12, 12}, IP6: {13, 9}}
	typeofTransport = map[uint8]uint32{6: 8, 17: 6, 132: 10} // dport is field 2 of each
)

func tlv(typ byte, data []byte) []byte { return append([]byte{typ, byte(len(data))}, data...) }

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// userdata is what nft stores for t, byte for byte.
func (t *Typeof) userdata() ([]byte, error) {
	net, ok := typeofNetwork[t.Family]
	proto, ok2 := typeofTransport[t.Proto]
	if !ok || !ok2 || t.Mod == 0 {
		return nil, fmt.Errorf("no typeof form for %s", t.text())
	}
	payload := func(desc, field uint32) []byte {
		return append(tlv(0, u32(exprPayload)), tlv(1, append(tlv(0, u32(desc)), tlv(1, u32(field))...))...)
	}
	numgen := append(tlv(0, u32(1)), append(tlv(1, u32(t.Mod)), tlv(2, u32(0))...)...) // random, mod, offset
	concat := append(tlv(0, payload(net[0], net[1])), tlv(1, payload(proto, 2))...)
	key := append(tlv(0, u32(exprNumgen)), tlv(1, numgen)...)
	order := uint32(1) // host
	if t.Dest {
		key = append(tlv(0, u32(exprConcat)), tlv(1, append(slices.Clone(concat), tlv(2, key)...))...)
		order = 0 // a concatenation's fields keep their own
	}
	var b []byte
	b = append(b, tlv(udataKeyByteorder, u32(order))...)
	b = append(b, tlv(udataDataByteorder, u32(0))...)
	b = append(b, tlv(udataKeyTypeof, key)...)
	b = append(b, tlv(udataDataTypeof, append(tlv(0, u32(exprConcat)), tlv(1, concat)...))...)
	b = append(b, tlv(udataDataInterval, u32(0))...)
	return b, nil
}

// parseTypeof finds the Typeof whose userdata is b, if any.
func parseTypeof(b []byte) (*Typeof, bool) {
	// Read the modulus and the two descriptions, then check that writing
	// that Typeof gives exactly b.
	top := tlvs(b)
	key := tlvs(top[udataKeyTypeof])
	t := &Typeof{}
	numgen := tlvs(key[1])
	if le32(key[0]) == exprConcat {
		t.Dest = true
		numgen = tlvs(tlvs(tlvs(key[1])[2])[1])
	}
	t.Mod = le32(numgen[1])
	concat := tlvs(tlvs(top[udataDataTypeof])[1])
	desc := func(elem []byte) uint32 { return le32(tlvs(tlvs(elem)[1])[0]) }
	for f, d := range typeofNetwork {
		if desc(concat[0]) == d[0] {
			t.Family = f
		}
	}
	for p, d := range typeofTransport {
		if desc(concat[1]) == d {
			t.Proto = p
		}
	}
	want, err := t.userdata()
	if err != nil || string(want) != string(b) {
		return nil, false
	}
	return t, true
}

// tlvs splits libnftnl's userdata format (a type byte, a length byte, the
// value) into values by type.
func tlvs(b []byte) map[byte][]byte {
	out := map[byte][]byte{}
	for len(b) >= 2 && int(b[1])+2 <= len(b) {
		out[b[0]] = b[2 : 2+b[1]]
		b = b[2+b[1]:]
	}
	return out
}

func le32(b []byte) uint32 {
	if len(b) != 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(b)
}
