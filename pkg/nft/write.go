package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
)

// The helpers here queue a Table's parts on a connection (see Conn);
// nothing reaches the kernel until conn.Flush, which commits the batch all
// or nothing.

// GTable is the table family/name as google/nftables names it.
func GTable(f Family, name string) *gnft.Table {
	return &gnft.Table{Name: name, Family: gnft.TableFamily(f)}
}

// GChain is c as google/nftables describes it (without rules).
func GChain(t *gnft.Table, c *Chain) *gnft.Chain {
	ch := &gnft.Chain{Name: c.Name, Table: t}
	if b := c.Base; b != nil {
		hook := gnft.ChainHook(b.Hook)
		prio := gnft.ChainPriority(b.Priority)
		policy := gnft.ChainPolicyAccept
		if b.Policy == PolicyDrop {
			policy = gnft.ChainPolicyDrop
		}
		ch.Hooknum, ch.Priority, ch.Policy, ch.Type = &hook, &prio, &policy, gnft.ChainType(b.Type)
	}
	return ch
}

var gTypes = map[Type]gnft.SetDatatype{
	TypeIPv4Addr:    gnft.TypeIPAddr,
	TypeIPv6Addr:    gnft.TypeIP6Addr,
	TypeInetProto:   gnft.TypeInetProto,
	TypeInetService: gnft.TypeInetService,
	TypeMark:        gnft.TypeMark,
	TypeInteger:     gnft.TypeInteger,
	TypeVerdict:     gnft.TypeVerdict,
}

func gType(ts []Type) (gnft.SetDatatype, error) {
	g := make([]gnft.SetDatatype, len(ts))
	for i, t := range ts {
		var ok bool
		if g[i], ok = gTypes[t]; !ok || (t == TypeVerdict && len(ts) > 1) {
			return gnft.SetDatatype{}, fmt.Errorf("type %s cannot be part of a key", typesText(ts))
		}
	}
	switch len(g) {
	case 0:
		return gnft.SetDatatype{}, fmt.Errorf("no type")
	case 1:
		return g[0], nil
	}
	return gnft.ConcatSetType(g...)
}

// GSet is s as google/nftables describes it (without elements).
func GSet(t *gnft.Table, s *Set) (*gnft.Set, error) {
	if slices.Contains(s.Key, TypeVerdict) {
		return nil, fmt.Errorf("set %s: a key cannot be a verdict", s.Name)
	}
	key, err := gType(s.Key)
	if err != nil {
		return nil, fmt.Errorf("set %s: %w", s.Name, err)
	}
	g := &gnft.Set{Table: t, Name: s.Name, KeyType: key, Concatenation: len(s.Key) > 1, Interval: s.Interval,
		Dynamic: s.Dynamic, HasTimeout: s.Timeout > 0, Timeout: s.Timeout, Size: s.Size}
	if s.IsMap() {
		if g.DataType, err = gType(s.Data); err != nil {
			return nil, fmt.Errorf("map %s: %w", s.Name, err)
		}
		g.IsMap = true
	}
	return g, nil
}

// GElements encodes elements of s as the kernel stores them. An interval
// of one field is two elements, as nft writes it: its start, with the
// data, and an end element at the first number past it (none when it runs
// to the field's largest number).
func GElements(s *Set, elems []Element) ([]gnft.SetElement, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	out := make([]gnft.SetElement, 0, len(elems))
	for _, e := range elems {
		if err := s.checkElement(e); err != nil {
			return nil, err
		}
		g := gnft.SetElement{Key: encode(s.Key, e.Key, false), Comment: e.Comment}
		var end *gnft.SetElement
		if s.Interval && len(s.Key) == 1 {
			g.Key = bigEndian(e.Key[0].num, s.Key[0].size())
			if last := e.Key[0].end; uint64(last) < 1<<(8*s.Key[0].size())-1 {
				end = &gnft.SetElement{Key: bigEndian(last+1, s.Key[0].size()), IntervalEnd: true}
			}
		}
		switch {
		case s.IsVerdictMap():
			v, ok := e.Verdict.expr()
			if !ok {
				return nil, fmt.Errorf("map %s: element %s: %w", s.Name, e.KeyText(s), errBadVerdict)
			}
			g.VerdictData = v
		case s.IsMap():
			g.Val = encode(s.Data, e.Data, false)
		}
		if s.Interval && len(s.Key) > 1 {
			g.KeyEnd = encode(s.Key, e.Key, true)
		}
		out = append(out, g)
		if end != nil {
			out = append(out, *end)
		}
	}
	return out, nil
}

// bigEndian is n in size bytes, most significant first: how an interval
// set of one field keeps its numbers, whatever their type's byte order.
func bigEndian(n uint32, size int) []byte {
	b := binary.BigEndian.AppendUint32(nil, n)
	return b[4-size:]
}

// encode lays values out as the kernel stores a key or data: each field in
// its type's byte order, padded to 32 bits in a concatenation; last picks
// the last address or number of ranges.
func encode(ts []Type, vals []Value, last bool) []byte {
	var b []byte
	for i, t := range ts {
		v := vals[i]
		a, n := v.addr, v.num
		if last {
			a, n = v.last, v.end
		}
		start := len(b)
		switch t {
		case TypeIPv4Addr, TypeIPv6Addr:
			b = append(b, a.AsSlice()...)
		case TypeInetProto:
			b = append(b, byte(n))
		case TypeInetService:
			b = binary.BigEndian.AppendUint16(b, uint16(n))
		default:
			b = append(b, binaryutil.NativeEndian.PutUint32(n)...)
		}
		if len(ts) > 1 {
			b = append(b, make([]byte, padded(len(b)-start)-(len(b)-start))...)
		}
	}
	return b
}

// ElementsPerMessage keeps each element message's nested element list
// under netlink's 64 KiB attribute length: a longer list overflows the
// 16-bit nla_len and the kernel misreads the batch (seen as ENOENT).
// Several messages in one batch are still one transaction.
const ElementsPerMessage = 256

// AddSet queues set s of table t, without its elements: a verdict map's
// elements may name chains that must exist first.
func AddSet(conn *Conn, t *gnft.Table, s *Set) error {
	g, err := GSet(t, s)
	if err != nil {
		return err
	}
	if err := s.check(); err != nil {
		return err
	}
	if err := conn.register(t, s); err != nil {
		return err
	}
	if err := conn.AddSet(g, nil); err != nil {
		return fmt.Errorf("set %s: %w", s.Name, err)
	}
	return nil
}

// AddElements queues elems for addition to s.
func AddElements(conn *Conn, t *gnft.Table, s *Set, elems []Element) error {
	return writeElements(conn.SetAddElements, t, s, elems)
}

// DelElements queues elems for deletion from s.
func DelElements(conn *Conn, t *gnft.Table, s *Set, elems []Element) error {
	return writeElements(conn.SetDeleteElements, t, s, elems)
}

func writeElements(write func(*gnft.Set, []gnft.SetElement) error, t *gnft.Table, s *Set, elems []Element) error {
	if len(elems) == 0 {
		return nil
	}
	g, err := GSet(t, s)
	if err != nil {
		return err
	}
	enc, err := GElements(s, elems)
	if err != nil {
		return err
	}
	if s.Interval && len(s.Key) == 1 {
		SortIntervalElements(enc)
	}
	for chunk := range slices.Chunk(enc, ElementsPerMessage) {
		if err := write(g, chunk); err != nil {
			return fmt.Errorf("elements of %s: %w", s.Name, err)
		}
	}
	return nil
}

// AddRule queues rule r at the end of chain c of table t.
func AddRule(conn *Conn, t *gnft.Table, c *Chain, r Rule) error {
	ex, err := CompileRule(Family(t.Family), r)
	if err != nil {
		return fmt.Errorf("rule in chain %s: %w", c.Name, err)
	}
	conn.AddRule(&gnft.Rule{Table: t, Chain: &gnft.Chain{Name: c.Name, Table: t}, Exprs: ex})
	return nil
}

// Queue queues everything of t (which must not exist yet, or be empty):
// the table, its sets, its chains, their rules, then the sets' elements.
func Queue(conn *Conn, t *Table) error {
	g := conn.AddTable(GTable(t.Family, t.Name))
	for _, s := range t.Sets {
		if err := AddSet(conn, g, s); err != nil {
			return err
		}
	}
	for _, c := range t.Chains {
		conn.AddChain(GChain(g, c))
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			if err := AddRule(conn, g, c, r); err != nil {
				return err
			}
		}
	}
	for _, s := range t.Sets {
		if err := AddElements(conn, g, s, s.Elements); err != nil {
			return err
		}
	}
	return nil
}

// SortIntervalElements puts the elements of an interval set of one field in
// the order the kernel takes them in one transaction: by key, and at one
// key an interval's end before the next interval's start (deleting the
// start first, the kernel finds neither).
func SortIntervalElements(enc []gnft.SetElement) {
	slices.SortStableFunc(enc, func(a, b gnft.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return cmpBool(b.IntervalEnd, a.IntervalEnd)
	})
}
