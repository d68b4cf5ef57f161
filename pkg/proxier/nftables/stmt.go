package nftables

import (
	"fmt"
	"net/netip"

	"github.com/proxyd/proxyd/pkg/model"
)

// The statements proxyd's rules are made of. Each is a value type so rules
// compare with ==-like equality through their text.

// MatchServiceTuple looks up "daddr . l4proto . dport" in a verdict map
// (Vmap) or tests membership in a set.
type MatchServiceTuple struct {
	Set  string
	Vmap bool
}

// MatchDestIn tests the destination address for membership in a named set
// (Set) or a prefix (Prefix, negated with Not).
type MatchDestIn struct {
	Set    string
	Prefix netip.Prefix
	Not    bool
}

// MatchSourceIn matches sources inside a prefix.
type MatchSourceIn struct{ Prefix netip.Prefix }

// MatchFibLocal matches packets whose destination (or, with Source, whose
// source) is an address of this node.
type MatchFibLocal struct{ Source bool }

// MatchProtoPort looks up "l4proto . dport" in a verdict map (Vmap) or
// tests membership in a set: the NodePort dispatch.
type MatchProtoPort struct {
	Set  string
	Vmap bool
}

// MatchSourceInSet tests the source address against a named set.
type MatchSourceInSet struct{ Set string }

// UpdateSource adds (or refreshes) the source address in a dynamic set.
type UpdateSource struct{ Set string }

// Goto continues in another chain and does not come back.
type Goto struct{ Chain string }

// Drop discards the packet silently.
type Drop struct{}

// Accept ends this hook's evaluation and lets the packet on.
type Accept struct{}

// MatchSourceDest tests "saddr . daddr" for membership in a set (hairpin).
type MatchSourceDest struct{ Set string }

// MatchCtStateNew matches the first packet of a connection.
type MatchCtStateNew struct{}

// MatchCtStatusDNAT matches connections that were destination-NATed.
type MatchCtStatusDNAT struct{}

// MatchMark matches packets that carry the mark bit.
type MatchMark struct{ Mark uint32 }

// MatchSourceNotIn matches sources outside a prefix.
type MatchSourceNotIn struct{ Prefix netip.Prefix }

// MatchL4Proto matches the transport protocol.
type MatchL4Proto struct{ Proto model.Protocol }

// SetMark ORs the mark bit into the packet mark.
type SetMark struct{ Mark uint32 }

// ClearMark XORs the mark bit out of the packet mark (it is known to be set).
type ClearMark struct{ Mark uint32 }

// Masquerade rewrites the source to the outgoing interface's address.
type Masquerade struct{ FullyRandom bool }

// Reject answers with ICMP port unreachable, which a TCP client reports as
// "connection refused".
type Reject struct{}

// Jump continues in another chain.
type Jump struct{ Chain string }

// PickOneIn matches with probability 1/N, drawing a fresh random number
// (`numgen random mod N 0`). Endpoint i of n is preceded by
// PickOneIn{n-i}, which makes the choice uniform, as iptables' statistic
// match does; the comparison with 0 reads the same in any byte order.
type PickOneIn struct{ N int }

// DNAT rewrites the destination to Target.
type DNAT struct{ Target netip.AddrPort }

func (s MatchServiceTuple) text(f model.IPFamily) string {
	t := familyWord(f) + " daddr . meta l4proto . th dport "
	if s.Vmap {
		return t + "vmap @" + s.Set
	}
	return t + "@" + s.Set
}

func (s MatchSourceDest) text(f model.IPFamily) string {
	w := familyWord(f)
	return w + " saddr . " + w + " daddr @" + s.Set
}

func (s MatchDestIn) text(f model.IPFamily) string {
	if s.Set != "" {
		return familyWord(f) + " daddr @" + s.Set
	}
	op := ""
	if s.Not {
		op = "!= "
	}
	return familyWord(f) + " daddr " + op + prefixText(s.Prefix)
}

// prefixText prints a prefix as nft does: a single address without /len.
func prefixText(p netip.Prefix) string {
	p = p.Masked()
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (s MatchSourceIn) text(f model.IPFamily) string {
	return familyWord(f) + " saddr " + prefixText(s.Prefix)
}

func (s MatchFibLocal) text(model.IPFamily) string {
	if s.Source {
		return "fib saddr type local"
	}
	return "fib daddr type local"
}

func (s MatchProtoPort) text(model.IPFamily) string {
	if s.Vmap {
		return "meta l4proto . th dport vmap @" + s.Set
	}
	return "meta l4proto . th dport @" + s.Set
}

func (s MatchSourceInSet) text(f model.IPFamily) string { return familyWord(f) + " saddr @" + s.Set }

func (s UpdateSource) text(f model.IPFamily) string {
	return "update @" + s.Set + " { " + familyWord(f) + " saddr }"
}

func (s Goto) text(model.IPFamily) string { return "goto " + s.Chain }
func (Drop) text(model.IPFamily) string   { return "drop" }
func (Accept) text(model.IPFamily) string { return "accept" }

func (MatchCtStateNew) text(model.IPFamily) string   { return "ct state new" }
func (MatchCtStatusDNAT) text(model.IPFamily) string { return "ct status dnat" }

func (s MatchMark) text(model.IPFamily) string {
	return fmt.Sprintf("meta mark & 0x%08x == 0x%08x", s.Mark, s.Mark)
}

func (s MatchSourceNotIn) text(f model.IPFamily) string {
	return familyWord(f) + " saddr != " + prefixText(s.Prefix)
}

func (s MatchL4Proto) text(model.IPFamily) string { return "meta l4proto " + s.Proto.Lower() }

func (s SetMark) text(model.IPFamily) string {
	return fmt.Sprintf("meta mark set meta mark | 0x%08x", s.Mark)
}

func (s ClearMark) text(model.IPFamily) string {
	return fmt.Sprintf("meta mark set meta mark ^ 0x%08x", s.Mark)
}

func (s Masquerade) text(model.IPFamily) string {
	if s.FullyRandom {
		return "masquerade fully-random"
	}
	return "masquerade"
}

func (Reject) text(model.IPFamily) string { return "reject" }

func (s Jump) text(model.IPFamily) string { return "jump " + s.Chain }

func (s PickOneIn) text(model.IPFamily) string { return fmt.Sprintf("numgen random mod %d 0", s.N) }

func (s DNAT) text(model.IPFamily) string { return "dnat to " + s.Target.String() }
