package nft

import (
	"fmt"
	"slices"
)

// maxDiffLines bounds the differences Drift reports for one set or chain:
// a deleted table of ten thousand Services is one story, not a listing.
const maxDiffLines = 20

// Drift compares a table as the kernel holds it (read back with
// Reader.Table; nil when there is none) with the table its owner means
// to have there, and describes each difference in nft's words: a table,
// set or chain missing or not the owner's, a set defined otherwise, an
// element or rule missing or extra, a chain hooked otherwise or holding
// the right rules in another order. Elements in sets that rules fill
// (dynamic sets, and any element the kernel counts down to its expiry)
// are what the kernel learned from packets, not what was written, and
// are left out. Nothing means no drift.
func Drift(have, want *Table) []string {
	switch {
	case want == nil && have == nil:
		return nil
	case want == nil:
		return []string{fmt.Sprintf("table %s %s exists, but none is meant to", have.Family, have.Name)}
	case have == nil:
		return []string{fmt.Sprintf("table %s %s is missing", want.Family, want.Name)}
	}
	h, w := have.Canonical(), want.Canonical()
	var out []string
	for _, ws := range w.Sets {
		hs := h.Set(ws.Name)
		if hs == nil {
			out = append(out, fmt.Sprintf("%s %s is missing", setKind(ws), ws.Name))
			continue
		}
		out = append(out, setDrift(hs, ws)...)
	}
	for _, hs := range h.Sets {
		if w.Set(hs.Name) == nil {
			out = append(out, fmt.Sprintf("%s %s is not meant to be there", setKind(hs), hs.Name))
		}
	}
	for _, wc := range w.Chains {
		hc := h.Chain(wc.Name)
		if hc == nil {
			out = append(out, fmt.Sprintf("chain %s is missing", wc.Name))
			continue
		}
		out = append(out, chainDrift(hc, wc, w.Family)...)
	}
	for _, hc := range h.Chains {
		if w.Chain(hc.Name) == nil {
			out = append(out, fmt.Sprintf("chain %s is not meant to be there", hc.Name))
		}
	}
	return out
}

func setKind(s *Set) string {
	if s.IsMap() {
		return "map"
	}
	return "set"
}

// setDrift compares one set's definition and written elements.
func setDrift(have, want *Set) []string {
	kind := setKind(want)
	if hd, wd := have.Definition(), want.Definition(); hd != wd {
		return []string{fmt.Sprintf("%s %s is defined otherwise: the kernel has\n%swant\n%s", kind, want.Name, hd, wd)}
	}
	if want.Dynamic {
		return nil
	}
	written := func(s *Set) []string {
		var out []string
		for _, e := range s.Elements {
			if e.Expires == 0 {
				out = append(out, e.Text(s))
			}
		}
		return out
	}
	missing, extra := notIn(written(want), written(have)), notIn(written(have), written(want))
	prefix := kind + " " + want.Name
	return append(capped(prefix+": element missing: ", missing), capped(prefix+": element not meant to be there: ", extra)...)
}

// chainDrift compares one chain's hook and rules.
func chainDrift(have, want *Chain, f Family) []string {
	base := func(c *Chain) string {
		if c.Base == nil {
			return "a regular chain"
		}
		b := c.Base
		return fmt.Sprintf("type %s hook %s priority %s; policy %s;", b.Type, b.Hook, PriorityText(b.Hook, b.Priority), b.Policy)
	}
	if hb, wb := base(have), base(want); hb != wb {
		return []string{fmt.Sprintf("chain %s is %s, want %s", want.Name, hb, wb)}
	}
	texts := func(c *Chain) []string {
		out := make([]string, len(c.Rules))
		for i, r := range c.Rules {
			out[i] = r.Text(f)
		}
		return out
	}
	hr, wr := texts(have), texts(want)
	missing, extra := notIn(wr, hr), notIn(hr, wr)
	out := append(capped("chain "+want.Name+": rule missing: ", missing), capped("chain "+want.Name+": rule not meant to be there: ", extra)...)
	if len(out) == 0 && !slices.Equal(hr, wr) {
		out = append(out, fmt.Sprintf("chain %s holds the right rules in another order", want.Name))
	}
	return out
}

// notIn returns the lines of a that b lacks, in a's order.
func notIn(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, l := range b {
		in[l] = true
	}
	var out []string
	for _, l := range a {
		if !in[l] {
			out = append(out, l)
		}
	}
	return out
}

// capped prefixes each line, up to maxDiffLines of them, and says how many
// more there are.
func capped(prefix string, lines []string) []string {
	var out []string
	for i, l := range lines {
		if i == maxDiffLines {
			out = append(out, fmt.Sprintf("%s… and %d more", prefix, len(lines)-i))
			break
		}
		out = append(out, prefix+l)
	}
	return out
}
