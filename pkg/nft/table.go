package nft

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Family is a table's address family; its value is the kernel's NFPROTO_*.
type Family uint8

// The families proxyd's tables use.
const (
	INet Family = unix.NFPROTO_INET
	IP   Family = unix.NFPROTO_IPV4
	IP6  Family = unix.NFPROTO_IPV6
)

func (f Family) String() string {
	switch f {
	case INet:
		return "inet"
	case IP:
		return "ip"
	case IP6:
		return "ip6"
	}
	return fmt.Sprintf("family-%d", uint8(f))
}

// covers reports whether a table of family f sees packets of the IP family
// ip (IP or IP6).
func (f Family) covers(ip Family) bool { return f == INet || f == ip }

// Hook is a netfilter hook; its value is the kernel's NF_INET_*.
type Hook uint8

// The five IP hooks.
const (
	Prerouting  Hook = unix.NF_INET_PRE_ROUTING
	Input       Hook = unix.NF_INET_LOCAL_IN
	Forward     Hook = unix.NF_INET_FORWARD
	Output      Hook = unix.NF_INET_LOCAL_OUT
	Postrouting Hook = unix.NF_INET_POST_ROUTING
)

func (h Hook) String() string {
	switch h {
	case Prerouting:
		return "prerouting"
	case Input:
		return "input"
	case Forward:
		return "forward"
	case Output:
		return "output"
	case Postrouting:
		return "postrouting"
	}
	return fmt.Sprintf("hook-%d", uint8(h))
}

// ChainType is a base chain's type.
type ChainType string

// The chain types.
const (
	Filter ChainType = "filter"
	NAT    ChainType = "nat"
	Route  ChainType = "route"
)

// Policy is what a base chain does with a packet no rule decided.
type Policy uint8

// The policies; the zero value is accept.
const (
	PolicyAccept Policy = iota
	PolicyDrop
)

func (p Policy) String() string {
	if p == PolicyDrop {
		return "drop"
	}
	return "accept"
}

// Table is one nftables table: its sets and chains in the order the kernel
// lists them (the order they are created in).
type Table struct {
	Family Family
	Name   string
	Sets   []*Set
	Chains []*Chain
}

// Chain is a chain; Base is nil for a regular chain (one only jumps reach).
type Chain struct {
	Name  string
	Base  *Base
	Rules []Rule
	// Handles are the kernel's handles of Rules, in a chain read back
	// from it (nil in a rendering): a new rule always gets a new one.
	Handles []uint64
}

// Base makes a chain a base chain, attached to Hook at Priority.
type Base struct {
	Type     ChainType
	Hook     Hook
	Priority int32
	Policy   Policy
}

// Set returns the set or map named name, or nil.
func (t *Table) Set(name string) *Set {
	for _, s := range t.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Chain returns the chain named name, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Rule is a list of statements, evaluated left to right: matches narrow,
// actions act, and a verdict ends the rule.
type Rule []Stmt

// Text is the rule as nft prints it in a table of family f.
func (r Rule) Text(f Family) string {
	var b []byte
	for i, s := range r {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, s.text(f)...)
	}
	return string(b)
}

// Canonical returns a copy of t with its sets and chains in name order,
// each set's elements in key order and no rule handles: the form in which
// a table read back
// from the kernel (which lists objects in the order they were created and
// hash sets in hash order) compares with a rendering.
func (t *Table) Canonical() *Table {
	c := *t
	c.Sets = make([]*Set, len(t.Sets))
	for i, s := range t.Sets {
		cs := *s
		cs.Elements = append([]Element(nil), s.Elements...)
		cs.SortElements()
		c.Sets[i] = &cs
	}
	slices.SortStableFunc(c.Sets, func(a, b *Set) int { return strings.Compare(a.Name, b.Name) })
	c.Chains = make([]*Chain, len(t.Chains))
	for i, ch := range t.Chains {
		cc := *ch
		cc.Handles = nil
		c.Chains[i] = &cc
	}
	slices.SortStableFunc(c.Chains, func(a, b *Chain) int { return strings.Compare(a.Name, b.Name) })
	return &c
}
