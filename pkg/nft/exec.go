package nft

import (
	"fmt"
	"strings"
)

// step is what evaluating one statement did to its rule.
type step uint8

const (
	stepNext    step = iota // matched (or acted): go on with the rule
	stepMiss                // did not match: the rule ends here
	stepVerdict             // ended the rule with exec.verdict
)

// exec evaluates the chains of one table for one packet at one hook.
type exec struct {
	t        *Tracer
	fl       *Flow
	table    *Table
	hook     Hook
	natChain bool
	verdict  Verdict
}

// maxDepth is the kernel's jump stack (NFT_JUMP_STACK_SIZE).
const maxDepth = 16

// chain runs c and returns how it ended: VerdictAccept or VerdictDrop, or
// 0 when it ran out of rules or returned (its caller goes on).
func (x *exec) chain(c *Chain, depth int) (VerdictKind, error) {
	if depth > maxDepth {
		return 0, fmt.Errorf("jumps nest deeper than %d at chain %s", maxDepth, c.Name)
	}
	for i, r := range c.Rules {
		v, err := x.rule(c, i, r)
		if err != nil {
			return 0, fmt.Errorf("rule %d (%s): %w", i, r.Text(x.table.Family), err)
		}
		switch v.Kind {
		case 0:
		case VerdictAccept, VerdictDrop:
			return v.Kind, nil
		case VerdictReturn:
			return 0, nil
		case VerdictJump, VerdictGoto:
			target := x.table.Chain(v.Chain)
			if target == nil {
				return 0, fmt.Errorf("rule %d: %s to missing chain %s", i, v.text(0), v.Chain)
			}
			if target.Base != nil {
				return 0, fmt.Errorf("rule %d: %s to base chain %s", i, v.text(0), v.Chain)
			}
			k, err := x.chain(target, depth+1)
			if err != nil || k != 0 || v.Kind == VerdictGoto {
				return k, err
			}
		}
	}
	return 0, nil
}

// rule evaluates r; it returns the verdict it ended with (Kind 0 when it
// did not match or matched without a verdict).
func (x *exec) rule(c *Chain, i int, r Rule) (Verdict, error) {
	x.verdict = Verdict{}
	for _, s := range r {
		st, err := s.eval(x)
		if err != nil {
			return Verdict{}, fmt.Errorf("%s: %w", s.text(x.table.Family), err)
		}
		switch st {
		case stepMiss:
			return Verdict{}, nil
		case stepVerdict:
			x.matched(c, i, r)
			return x.verdict, nil
		}
	}
	x.matched(c, i, r)
	return Verdict{}, nil
}

func (x *exec) matched(c *Chain, i int, r Rule) {
	x.fl.path = append(x.fl.path, Step{Hook: x.hook, Table: x.table, Chain: c.Name, Rule: i, rule: r})
}

// end finishes the rule with v.
func (x *exec) end(v Verdict) (step, error) {
	x.verdict = v
	return stepVerdict, nil
}

// field is the value of f in the packet; ok is false for an address field
// of the other IP family, which the rule's nfproto check would not pass.
func (x *exec) field(f Field) (Value, bool) {
	switch f {
	case MetaL4Proto:
		return NumValue(uint32(x.fl.Proto)), true
	case THDport:
		return NumValue(uint32(x.fl.Dst.Port())), true
	}
	i, _ := f.info()
	a := x.fl.Dst.Addr()
	if f.isSource() {
		a = x.fl.Src
	}
	if (i.family == IP) != a.Is4() {
		return Value{}, false
	}
	return AddrValue(a), true
}

// key reads fs from the packet.
func (x *exec) key(fs []Field) ([]Value, bool) {
	out := make([]Value, len(fs))
	for i, f := range fs {
		v, ok := x.field(f)
		if !ok {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

// keyID is keyID of the key fs reads from the packet, in the tracer's
// scratch buffer (valid until the next call).
func (x *exec) keyID(fs []Field) ([]byte, bool) {
	b := x.t.scratch[:0]
	for _, f := range fs {
		v, ok := x.field(f)
		if !ok {
			return nil, false
		}
		b = appendID(b, v)
	}
	x.t.scratch = b
	return b, true
}

// set returns the set named name, checking that a key of fs fits it.
func (x *exec) set(name string, fs []Field) (*Set, error) {
	s := x.t.setOf(x.table, name)
	if s == nil {
		return nil, fmt.Errorf("no set %s", name)
	}
	fits := len(fs) == len(s.Key)
	for i := 0; fits && i < len(fs); i++ {
		fits = fs[i].Type() == s.Key[i]
	}
	if !fits {
		return nil, fmt.Errorf("key %s does not fit set %s of type %s", fieldsText(fs), name, typesText(s.Key))
	}
	return s, nil
}

// lookup finds the key fs reads from the packet in s: a static element,
// or nil for one that a rule added. ok is false when a field is missing
// (an address of the other IP family).
func (x *exec) lookup(s *Set, fs []Field) (e *Element, found, ok bool) {
	id, ok := x.keyID(fs)
	if !ok {
		return nil, false, false
	}
	if s.Interval {
		key, _ := x.key(fs)
		for i := range s.Elements {
			if matches(s.Elements[i].Key, key) {
				return &s.Elements[i], true, true
			}
		}
	} else if i, ok := x.t.indexOf(s)[string(id)]; ok {
		return &s.Elements[i], true, true
	}
	return nil, x.fl.mem.sets[s][string(id)], true
}

// keyID identifies a key of single values (no ranges) for indexes.
func keyID(vals []Value) string {
	b := make([]byte, 0, 24*len(vals))
	for _, v := range vals {
		b = appendID(b, v)
	}
	return string(b)
}

func appendID(b []byte, v Value) []byte {
	if v.addr.IsValid() {
		a := v.addr.As16()
		return append(append(b, 'a'), a[:]...)
	}
	return append(b, 'n', byte(v.num>>24), byte(v.num>>16), byte(v.num>>8), byte(v.num))
}

func matches(elem, key []Value) bool {
	if len(elem) != len(key) {
		return false
	}
	for i := range elem {
		if !elem[i].contains(key[i]) {
			return false
		}
	}
	return true
}

// indexOf maps the key of each element of a set without intervals to its
// index.
func (t *Tracer) indexOf(s *Set) map[string]int {
	if m, ok := t.index[s]; ok {
		return m
	}
	m := make(map[string]int, len(s.Elements))
	for i, e := range s.Elements {
		m[keyID(e.Key)] = i
	}
	t.index[s] = m
	return m
}

// setOf finds a set of tb by name, through an index.
func (t *Tracer) setOf(tb *Table, name string) *Set {
	m, ok := t.sets[tb]
	if !ok {
		m = make(map[string]*Set, len(tb.Sets))
		for _, s := range tb.Sets {
			m[s.Name] = s
		}
		t.sets[tb] = m
	}
	return m[name]
}

// remember adds the key fs reads from the packet to the dynamic set s.
func (x *exec) remember(s *Set, fs []Field) {
	id, ok := x.keyID(fs)
	if !ok {
		return
	}
	m := x.fl.mem.sets[s]
	if m == nil {
		m = map[string]bool{}
		x.fl.mem.sets[s] = m
	}
	m[string(id)] = true
}

func typesText(ts []Type) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.String()
	}
	return strings.Join(parts, " . ")
}
