package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/proxyd/proxyd/pkg/nft"
)

// This file turns what pkg/nft's tracer reports — every outcome with its
// exact probability and the rules on its path — into explain's outcomes,
// for both modes that write nftables. It reads the rules the tracer
// followed, not the shape proxyd happens to give them today: a DNAT is
// whatever rewrote the destination, a masquerade whatever statement
// masqueraded, and its reason the conditions of the rule that marked the
// packet for it.

func nftPacket(q Query) nft.Packet {
	return nft.Packet{Src: q.Src, Dst: q.Dst, Proto: q.Proto.Number(), FromNode: q.FromNode}
}

// nftStep is a traced step as explain prints it: a rule of a table, or a
// pseudo-chain's note (IPVS).
func nftStep(s nft.Step) Step {
	if s.Table == nil {
		return Step{Hook: s.Hook.String(), Chain: s.Chain, Rule: s.Text()}
	}
	return Step{Hook: s.Hook.String(), Table: s.Table.Family.String() + " " + s.Table.Name, Chain: s.Chain, Rule: s.Text()}
}

// ruleOf is the rule a step matched, nil for a pseudo-chain's note.
func ruleOf(s nft.Step) nft.Rule {
	if s.Table == nil {
		return nil
	}
	c := s.Table.Chain(s.Chain)
	if c == nil || s.Rule < 0 || s.Rule >= len(c.Rules) {
		return nil
	}
	return c.Rules[s.Rule]
}

// nftOutcomes enumerates q through tr: each distinct outcome with its
// exact probability, sorted by verdict and endpoint.
func nftOutcomes(tr *nft.Tracer, q Query) ([]nft.Outcome, []Outcome, error) {
	outs, err := tr.Enumerate(nftPacket(q))
	if err != nil {
		return nil, nil, fmt.Errorf("trace the kernel's rules: %w", err)
	}
	slices.SortStableFunc(outs, func(a, b nft.Outcome) int {
		return cmp.Or(cmp.Compare(verdictOfNFT(a), verdictOfNFT(b)), a.Packet.Dst.Compare(b.Packet.Dst))
	})
	var out []Outcome
	for _, o := range outs {
		oc := Outcome{Verdict: verdictOfNFT(o), Probability: o.Probability, Masquerade: o.Masquerade, Path: []Step{}}
		if oc.Verdict == "dnat" {
			oc.Endpoint = o.Packet.Dst
		}
		for _, s := range o.Path {
			oc.Path = append(oc.Path, nftStep(s))
		}
		if o.Masquerade {
			oc.MasqueradeWhy = nftMasqueradeWhy(o.Path, q.Src)
		}
		out = append(out, oc)
	}
	return outs, out, nil
}

func verdictOfNFT(o nft.Outcome) string {
	switch {
	case o.Fate == nft.Rejected:
		return "reject"
	case o.Fate == nft.Dropped:
		return "drop"
	case o.DNAT:
		return "dnat"
	}
	return "untouched"
}

// nftMasqueradeWhy says why the packet that took path is masqueraded: the
// masquerading rule, and what made it apply.
func nftMasqueradeWhy(path []nft.Step, src netip.Addr) string {
	for i, s := range path {
		r := ruleOf(s)
		if !slices.ContainsFunc(r, isMasquerade) {
			continue
		}
		where := " (" + stepText(s) + ")"
		for _, st := range r {
			switch st := st.(type) {
			case nft.Lookup:
				if hasSource(st.Key) && hasDestination(st.Key) && !st.Not {
					return fmt.Sprintf("hairpin: the client %v is the endpoint it was sent to, which must see the node as the source%s", src, where)
				}
			case nft.Mark:
				if j := markedBy(path[:i], st); j >= 0 {
					return markWhy(path[j], src) + " (" + stepText(path[j]) + ")"
				}
			}
		}
		return "rule" + where
	}
	return ""
}

func isMasquerade(s nft.Stmt) bool {
	_, ok := s.(nft.Masquerade)
	return ok
}

func stepText(s nft.Step) string {
	return fmt.Sprintf("%s %s %s: %s", s.Table.Family, s.Table.Name, s.Chain, s.Text())
}

func hasSource(fs []nft.Field) bool {
	return slices.Contains(fs, nft.IPSaddr) || slices.Contains(fs, nft.IP6Saddr)
}

func hasDestination(fs []nft.Field) bool {
	return slices.Contains(fs, nft.IPDaddr) || slices.Contains(fs, nft.IP6Daddr)
}

// markedBy finds the last step of path whose rule sets a bit that m
// tests, or -1.
func markedBy(path []nft.Step, m nft.Mark) int {
	for j := len(path) - 1; j >= 0; j-- {
		for _, st := range ruleOf(path[j]) {
			if sm, ok := st.(nft.SetMark); ok && sm.Op == nft.MarkOr && sm.Value&m.Mask != 0 {
				return j
			}
		}
	}
	return -1
}

// markWhy explains the rule that marked a packet for masquerade from its
// conditions: the source outside a range (the cluster CIDR), the source a
// node address, or none but where it sits (an external chain or set).
func markWhy(s nft.Step, src netip.Addr) string {
	r := ruleOf(s)
	for _, st := range r {
		switch st := st.(type) {
		case nft.AddrIn:
			if st.Not && (st.Field == nft.IPSaddr || st.Field == nft.IP6Saddr) {
				return fmt.Sprintf("the source %v is outside the cluster CIDR %v", src, st.Prefix)
			}
		case nft.FibLocal:
			if st.Source {
				return "the node itself sends it to an externalTrafficPolicy Local address, which sends it on through the ClusterIP"
			}
		}
	}
	if strings.HasPrefix(s.Chain, "ext-") || slices.ContainsFunc(r, func(st nft.Stmt) bool {
		l, ok := st.(nft.Lookup)
		return ok && strings.HasPrefix(l.Set, "external-masq")
	}) {
		return "external traffic (NodePort, external or load-balancer IP) with externalTrafficPolicy Cluster: replies must come back through this node"
	}
	return "--masquerade-all: every connection to a Service is masqueraded"
}

// visited lists the chains the outcomes' paths went through: those of
// their steps, and those their rules jump or go to.
func visited(outs []nft.Outcome) []*nft.Chain {
	var out []*nft.Chain
	add := func(t *nft.Table, name string) {
		if c := t.Chain(name); c != nil && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	for _, o := range outs {
		for _, s := range o.Path {
			if s.Table == nil {
				continue
			}
			add(s.Table, s.Chain)
			for _, st := range ruleOf(s) {
				if v, ok := st.(nft.Verdict); ok && v.Chain != "" {
					add(s.Table, v.Chain)
				}
			}
		}
	}
	return out
}

// nftNoMasqueradeWhy says why no outcome is masqueraded: the marking rule
// of the chains the packet went through that did not apply, and why not.
func nftNoMasqueradeWhy(outs []nft.Outcome, src netip.Addr) string {
	local := false
	for _, c := range visited(outs) {
		for _, r := range c.Rules {
			if !slices.ContainsFunc(r, func(st nft.Stmt) bool { _, ok := st.(nft.SetMark); return ok }) {
				continue
			}
			for _, st := range r {
				switch st := st.(type) {
				case nft.AddrIn:
					if st.Not && (st.Field == nft.IPSaddr || st.Field == nft.IP6Saddr) && st.Prefix.Contains(src) {
						return fmt.Sprintf("the source %v is inside the cluster CIDR %v, and no endpoint is the client itself (no hairpin)", src, st.Prefix)
					}
				case nft.FibLocal:
					local = local || st.Source
				}
			}
		}
	}
	if local {
		return "externalTrafficPolicy Local: the client's address is kept for the endpoint to see (only the node's own connections are masqueraded)"
	}
	return "no rule on its path marks it for masquerade, and no endpoint is the client itself (no hairpin)"
}

// nftDecidedBy is the rule that rejected or dropped the packet on every
// outcome, when they agree: what claimed a destination whose Service the
// rules do not name.
func nftDecidedBy(outs []nft.Outcome) *Step {
	var by *Step
	for _, o := range outs {
		if o.Fate == nft.Accepted || len(o.Path) == 0 {
			return nil
		}
		s := nftStep(o.Path[len(o.Path)-1])
		if by != nil && *by != s {
			return nil
		}
		by = &s
	}
	return by
}

// nftAffinity lists the client's entries in the dynamic sets the chains on
// the outcomes' paths look up or update (session affinity): the endpoint
// is the DNAT target of the rule that looks the set up, the age what the
// entry's timeout less the time it has left says. The kernel lists no
// expired entry, so each one it lists is active.
func nftAffinity(outs []nft.Outcome, src netip.Addr) []Affinity {
	var out []Affinity
	seen := map[*nft.Set]bool{}
	for _, c := range visited(outs) {
		t := tableOf(outs, c)
		for _, r := range c.Rules {
			for _, st := range r {
				name := ""
				switch st := st.(type) {
				case nft.Lookup:
					name = st.Set
				case nft.Update:
					name = st.Set
				}
				set := t.Set(name)
				if set == nil || seen[set] || !(set.Dynamic || set.Timeout > 0) {
					continue
				}
				seen[set] = true
				for _, e := range set.Elements {
					if !slices.ContainsFunc(e.Key, func(v nft.Value) bool { return v.Addr() == src }) {
						continue
					}
					timeout := set.Timeout
					if e.Timeout > 0 {
						timeout = e.Timeout
					}
					a := Affinity{Client: src, Endpoint: lookupTarget(t, set.Name), Timeout: timeout, Expires: e.Expires, Active: true,
						Where: fmt.Sprintf("dynamic set %s %s @%s", t.Family, t.Name, set.Name)}
					if e.Expires > 0 && timeout >= e.Expires {
						a.Age, a.AgeKnown = timeout-e.Expires, true
					}
					out = append(out, a)
				}
			}
		}
	}
	return out
}

// tableOf finds the table a visited chain belongs to.
func tableOf(outs []nft.Outcome, c *nft.Chain) *nft.Table {
	for _, o := range outs {
		for _, s := range o.Path {
			if s.Table != nil && slices.Contains(s.Table.Chains, c) {
				return s.Table
			}
		}
	}
	return nil
}

// lookupTarget is the DNAT target of the rule of t that looks set up, if
// one does.
func lookupTarget(t *nft.Table, set string) netip.AddrPort {
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			looks := slices.ContainsFunc(r, func(st nft.Stmt) bool { l, ok := st.(nft.Lookup); return ok && l.Set == set && !l.Not })
			for _, st := range r {
				if d, ok := st.(nft.DNAT); ok && looks {
					return d.To
				}
			}
		}
	}
	return netip.AddrPort{}
}
