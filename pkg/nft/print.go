package nft

import (
	"fmt"
	"strings"
	"time"
)

// String prints the table as `nft list table` does (nft 1.0), except that
// elements are one per line in the order the table holds them, where nft
// fills lines and lists hash sets in hash order; CanonicalListing makes the
// two comparable.
func (t *Table) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", t.Family, t.Name)
	first := true
	sep := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, s := range t.Sets {
		sep()
		s.write(&b)
	}
	for _, c := range t.Chains {
		sep()
		c.write(&b, t.Family)
	}
	b.WriteString("}\n")
	return b.String()
}

// String prints the set as nft lists it inside its table.
func (s *Set) String() string {
	var b strings.Builder
	s.write(&b)
	return b.String()
}

// Definition prints the set without its elements: what its creation says.
func (s *Set) Definition() string {
	c := *s
	c.Elements = nil
	return c.String()
}

func (s *Set) write(b *strings.Builder) {
	kind := "set"
	if s.IsMap() {
		kind = "map"
	}
	typ := typesText(s.Key)
	if s.IsMap() {
		typ += " : " + typesText(s.Data)
	}
	decl := "type " + typ
	if s.Typeof != nil {
		decl = s.Typeof.text()
	}
	fmt.Fprintf(b, "\t%s %s {\n\t\t%s\n", kind, s.Name, decl)
	if s.Size > 0 {
		fmt.Fprintf(b, "\t\tsize %d\n", s.Size)
	}
	var flags []string
	if s.Dynamic {
		flags = append(flags, "dynamic")
	}
	if s.Interval {
		flags = append(flags, "interval")
	}
	if s.Timeout > 0 {
		flags = append(flags, "timeout")
	}
	if len(flags) > 0 {
		fmt.Fprintf(b, "\t\tflags %s\n", strings.Join(flags, ","))
	}
	if s.Timeout > 0 {
		fmt.Fprintf(b, "\t\ttimeout %s\n", Duration(s.Timeout))
	}
	if len(s.Elements) > 0 {
		b.WriteString("\t\telements = { ")
		for i, e := range s.Elements {
			if i > 0 {
				b.WriteString(",\n\t\t\t     ")
			}
			b.WriteString(e.Text(s))
		}
		b.WriteString(" }\n")
	}
	b.WriteString("\t}\n")
}

func (c *Chain) write(b *strings.Builder, f Family) {
	fmt.Fprintf(b, "\tchain %s {\n", c.Name)
	if c.Base != nil {
		fmt.Fprintf(b, "\t\ttype %s hook %s priority %s; policy %s;\n", c.Base.Type, c.Base.Hook, PriorityText(c.Base.Hook, c.Base.Priority), c.Base.Policy)
	}
	for _, r := range c.Rules {
		b.WriteString("\t\t" + r.Text(f) + "\n")
	}
	b.WriteString("\t}\n")
}

// Duration prints a duration as nft does: "3h", "1h30m", "10s".
func Duration(d time.Duration) string {
	var b strings.Builder
	ms := d.Milliseconds()
	for _, u := range []struct {
		n    int64
		unit string
	}{{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}} {
		if v := ms / u.n; v > 0 {
			fmt.Fprintf(&b, "%d%s", v, u.unit)
			ms -= v * u.n
		}
	}
	if b.Len() == 0 {
		return "0s"
	}
	return b.String()
}

// stdPriorities are nft's names for standard priorities, with the hooks of
// the ip, ip6 and inet families each name is valid in (nil: every hook).
var stdPriorities = []struct {
	name  string
	prio  int32
	hooks []Hook
}{
	{"raw", -300, nil},
	{"mangle", -150, nil},
	{"dstnat", -100, []Hook{Prerouting}},
	{"filter", 0, nil},
	{"security", 50, nil},
	{"srcnat", 100, []Hook{Postrouting}},
}

// PriorityText prints a base chain's priority as nft 1.0 does: a standard
// name where the hook allows it, that name plus or minus an offset of at
// most 10, or else the number.
func PriorityText(h Hook, prio int32) string {
	for _, s := range stdPriorities {
		if s.hooks != nil && !hookIn(h, s.hooks) {
			continue
		}
		switch off := prio - s.prio; {
		case off == 0:
			return s.name
		case off > 0 && off <= 10:
			return fmt.Sprintf("%s + %d", s.name, off)
		case off < 0 && off >= -10:
			return fmt.Sprintf("%s - %d", s.name, -off)
		}
	}
	return fmt.Sprint(prio)
}

func hookIn(h Hook, hs []Hook) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}
