// Package nftables is proxyd's nftables backend. It renders the model into
// a small, typed ruleset (pure, golden-tested through String, which prints
// exactly what `nft list table` prints), compiles that ruleset to netlink
// expressions with github.com/google/nftables, and writes only what changed
// since the last successful sync in one atomic transaction.
//
// The ruleset's shape is chosen for the kernel's commit cost: one verdict
// map dispatches VIP . protocol . port to a chain per service port, and that
// chain picks its endpoint with one `numgen random mod k 0` rule per
// endpoint (the nftables form of iptables' statistic match), so there are
// no per-endpoint chains and no jumps beyond the one goto per service. A
// numgen-indexed anonymous map would be O(1) per packet, but
// github.com/google/nftables marks anonymous sets' keys big-endian, so
// `nft list` would print numgen's host-endian keys as 16777216 instead of 1;
// an admin reading the table must see what the kernel does.
package nftables

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// TableName is the table proxyd owns in each family.
const TableName = "proxyd"

// Ruleset is the desired content of one family's proxyd table.
type Ruleset struct {
	Family model.IPFamily
	Sets   []*Set
	Chains []*Chain
}

// Set is a named set or verdict map.
type Set struct {
	Name     string
	Fields   []FieldType
	Verdicts bool // a verdict map: every element carries a goto
	Elements []Element
	// Timeout makes the set dynamic: packets add their elements (session
	// affinity), which expire after Timeout.
	Timeout time.Duration
}

// affinitySetSize is the size nft gives a dynamic set it is not told.
const affinitySetSize = 65535

// FieldType is one component of a concatenated set key.
type FieldType int

// The key components proxyd uses.
const (
	FieldAddr FieldType = iota
	FieldProto
	FieldPort
)

// Element is one set element: its key fields and, in a verdict map, the
// chain it jumps to.
type Element struct {
	Fields []Value
	Goto   string
}

// Value is one key field of an element.
type Value struct {
	Addr  netip.Addr
	Proto model.Protocol
	Port  uint16
}

// Chain is a chain; Base is nil for a regular chain.
type Chain struct {
	Name  string
	Base  *BaseChain
	Rules []Rule
}

// BaseChain is a chain attached to a netfilter hook.
type BaseChain struct {
	Type     string // "nat" or "filter"
	Hook     string // "prerouting", "output", "postrouting", "forward", "input"
	Priority int
}

// Rule is a list of statements, matched left to right.
type Rule []Stmt

// Stmt is one match or action. Statements are a closed set defined in
// stmt.go; each knows its nft text and its netlink expressions.
type Stmt interface {
	text(f model.IPFamily) string
}

// Set returns the set named name, or nil.
func (r *Ruleset) Set(name string) *Set {
	for _, s := range r.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Chain returns the chain named name, or nil.
func (r *Ruleset) Chain(name string) *Chain {
	for _, c := range r.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func familyWord(f model.IPFamily) string {
	if f == model.IPv6 {
		return "ip6"
	}
	return "ip"
}

func (t FieldType) text(f model.IPFamily) string {
	switch t {
	case FieldAddr:
		if f == model.IPv6 {
			return "ipv6_addr"
		}
		return "ipv4_addr"
	case FieldProto:
		return "inet_proto"
	default:
		return "inet_service"
	}
}

func (v Value) text(t FieldType) string {
	switch t {
	case FieldAddr:
		return v.Addr.String()
	case FieldProto:
		return v.Proto.Lower()
	default:
		return fmt.Sprint(v.Port)
	}
}

// Key is the element's key as nft prints it, e.g. "10.96.0.10 . tcp . 80".
func (e Element) Key(types []FieldType) string {
	parts := make([]string, len(e.Fields))
	for i, v := range e.Fields {
		parts[i] = v.text(types[i])
	}
	return strings.Join(parts, " . ")
}

// String prints the ruleset exactly as `nft list table` prints it.
func (r *Ruleset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", familyWord(r.Family), TableName)
	first := true
	sep := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, s := range r.Sets {
		sep()
		s.write(&b, r.Family)
	}
	for _, c := range r.Chains {
		sep()
		c.write(&b, r.Family)
	}
	b.WriteString("}\n")
	return b.String()
}

func (s *Set) write(b *strings.Builder, f model.IPFamily) {
	kind := "set"
	if s.Verdicts {
		kind = "map"
	}
	types := make([]string, len(s.Fields))
	for i, t := range s.Fields {
		types[i] = t.text(f)
	}
	typ := strings.Join(types, " . ")
	if s.Verdicts {
		typ += " : verdict"
	}
	fmt.Fprintf(b, "\t%s %s {\n\t\ttype %s\n", kind, s.Name, typ)
	if s.Timeout > 0 {
		fmt.Fprintf(b, "\t\tsize %d\n\t\tflags dynamic,timeout\n\t\ttimeout %s\n", affinitySetSize, nftDuration(s.Timeout))
	}
	if len(s.Elements) > 0 {
		elems := make([]string, len(s.Elements))
		for i, e := range s.Elements {
			elems[i] = e.Key(s.Fields)
			if s.Verdicts {
				elems[i] += " : goto " + e.Goto
			}
		}
		writeElements(b, elems)
	}
	b.WriteString("\t}\n")
}

// writeElements wraps the element list the way nft does: one line while it
// fits, otherwise one element per line, indented under "elements = { ".
func writeElements(b *strings.Builder, elems []string) {
	b.WriteString("\t\telements = { ")
	if len(elems) == 1 {
		b.WriteString(elems[0] + " }\n")
		return
	}
	for i, e := range elems {
		if i > 0 {
			b.WriteString(",\n\t\t\t     ")
		}
		b.WriteString(e)
	}
	b.WriteString(" }\n")
}

func (c *Chain) write(b *strings.Builder, f model.IPFamily) {
	fmt.Fprintf(b, "\tchain %s {\n", c.Name)
	if c.Base != nil {
		fmt.Fprintf(b, "\t\ttype %s hook %s priority %s; policy accept;\n", c.Base.Type, c.Base.Hook, priorityText(c.Base))
	}
	for _, r := range c.Rules {
		b.WriteString("\t\t" + r.text(f) + "\n")
	}
	b.WriteString("\t}\n")
}

func (r Rule) text(f model.IPFamily) string {
	parts := make([]string, len(r))
	for i, s := range r {
		parts[i] = s.text(f)
	}
	return strings.Join(parts, " ")
}

// nftDuration prints a duration as nft does: "3h", "1h30m", "10s".
func nftDuration(d time.Duration) string {
	var b strings.Builder
	secs := int64(d / time.Second)
	for _, u := range []struct {
		n    int64
		unit string
	}{{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}} {
		if v := secs / u.n; v > 0 {
			fmt.Fprintf(&b, "%d%s", v, u.unit)
			secs -= v * u.n
		}
	}
	if b.Len() == 0 {
		return "0s"
	}
	return b.String()
}

// priorityText prints a hook priority as nft 1.0 does: a standard name where
// the value is the standard one for the hook, else the number.
func priorityText(c *BaseChain) string {
	switch {
	case c.Type == "nat" && c.Hook == "prerouting" && c.Priority == -100:
		return "dstnat"
	case c.Type == "nat" && c.Hook == "postrouting" && c.Priority == 100:
		return "srcnat"
	case c.Type == "filter" && c.Priority == 0:
		return "filter"
	}
	return fmt.Sprint(c.Priority)
}
