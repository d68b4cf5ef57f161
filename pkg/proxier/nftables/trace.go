package nftables

import (
	"net/netip"

	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Tracer evaluates a rendered Ruleset for one packet the way the kernel
// would walk proxyd's chains: nat prerouting or output, the filter hooks,
// then nat postrouting.
type Tracer struct {
	R *Ruleset
	// aff holds what dynamic sets learned from earlier packets (session
	// affinity); nil forgets everything between packets.
	aff map[string]map[netip.Addr]bool
}

type packet struct {
	flowspec.Packet
	dst    netip.AddrPort
	mark   uint32
	dnat   bool
	masq   bool
	reject bool
	drop   bool
}

func (pk *packet) stopped() bool { return pk.reject || pk.drop }

// Trace implements flowspec.Tracer. The hooks run in the kernel's order:
// forwarded packets see nat prerouting, then filter forward (or filter
// input when they are for this node); the node's own packets see filter
// output (-110), nat output (-100), filter output after DNAT (-90) and,
// when addressed to the node, filter input.
func (t Tracer) Trace(p flowspec.Packet, rnd func(uint32) uint32) flowspec.Result {
	pk := &packet{Packet: p, dst: p.Dst}
	var hooks []string
	if p.FromNode {
		hooks = []string{chainFilterOutput, chainNatOutput, chainFilterPostDNAT, chainFilterInput}
	} else {
		hooks = []string{chainNatPrerouting, chainFilterForward, chainFilterInput}
	}
	for _, h := range hooks {
		if pk.stopped() {
			break
		}
		local := flowspec.NodeLocal(pk.dst.Addr())
		if (h == chainFilterInput && !local) || (h == chainFilterForward && local) {
			continue
		}
		t.run(t.R.Chain(h), pk, rnd)
	}
	switch {
	case pk.reject:
		return flowspec.Result{Verdict: flowspec.Reject}
	case pk.drop:
		return flowspec.Result{Verdict: flowspec.Drop}
	}
	t.run(t.R.Chain(chainNatPostroute), pk, rnd)
	if !pk.dnat {
		return flowspec.Result{Verdict: flowspec.Untouched, Masquerade: pk.masq}
	}
	return flowspec.Result{Verdict: flowspec.DNAT, Endpoint: pk.dst, Masquerade: pk.masq}
}

// run evaluates a chain; it returns true when a verdict ended evaluation.
func (t Tracer) run(c *Chain, pk *packet, rnd func(uint32) uint32) bool {
	if c == nil {
		return false
	}
	for _, r := range c.Rules {
		if t.rule(r, pk, rnd) {
			return true
		}
	}
	return false
}

func (t Tracer) rule(r Rule, pk *packet, rnd func(uint32) uint32) bool {
	for _, s := range r {
		switch s := s.(type) {
		case MatchServiceTuple:
			e, ok := t.lookup(s.Set, []Value{{Addr: pk.dst.Addr()}, {Proto: pk.Proto}, {Port: pk.dst.Port()}})
			if !ok {
				return false
			}
			if s.Vmap {
				t.run(t.R.Chain(e.Goto), pk, rnd)
				return true // goto: the calling chain does not resume
			}
		case MatchSourceDest:
			if _, ok := t.lookup(s.Set, []Value{{Addr: pk.Src}, {Addr: pk.dst.Addr()}}); !ok {
				return false
			}
		case MatchDestIn:
			if s.Set != "" {
				if _, ok := t.lookup(s.Set, []Value{{Addr: pk.dst.Addr()}}); !ok {
					return false
				}
			} else if s.Prefix.Contains(pk.dst.Addr()) == s.Not {
				return false
			}
		case MatchSourceIn:
			if !s.Prefix.Contains(pk.Src) {
				return false
			}
		case MatchFibLocal:
			a := pk.dst.Addr()
			if s.Source {
				a = pk.Src
			}
			if !flowspec.NodeLocal(a) {
				return false
			}
		case MatchProtoPort:
			e, ok := t.lookup(s.Set, []Value{{Proto: pk.Proto}, {Port: pk.dst.Port()}})
			if !ok {
				return false
			}
			if s.Vmap {
				t.run(t.R.Chain(e.Goto), pk, rnd)
				return true
			}
		case MatchSourceInSet:
			if !t.aff[s.Set][pk.Src] {
				return false
			}
		case UpdateSource:
			if t.aff != nil {
				if t.aff[s.Set] == nil {
					t.aff[s.Set] = map[netip.Addr]bool{}
				}
				t.aff[s.Set][pk.Src] = true
			}
		case Goto:
			t.run(t.R.Chain(s.Chain), pk, rnd)
			return true
		case Drop:
			pk.drop = true
			return true
		case Accept:
			return true
		case MatchCtStateNew:
		case MatchCtStatusDNAT:
			if !pk.dnat {
				return false
			}
		case MatchMark:
			if pk.mark&s.Mark != s.Mark {
				return false
			}
		case MatchSourceNotIn:
			if s.Prefix.Contains(pk.Src) {
				return false
			}
		case MatchL4Proto:
			if s.Proto != pk.Proto {
				return false
			}
		case PickOneIn:
			if rnd(uint32(s.N)) != 0 {
				return false
			}
		case SetMark:
			pk.mark |= s.Mark
		case ClearMark:
			pk.mark ^= s.Mark
		case Masquerade:
			pk.masq = true
			return true
		case Reject:
			pk.reject = true
			return true
		case DNAT:
			pk.dst, pk.dnat = s.Target, true
			return true
		case Jump:
			if t.run(t.R.Chain(s.Chain), pk, rnd) {
				return true
			}
		}
	}
	return false
}

func (t Tracer) lookup(set string, key []Value) (Element, bool) {
	s := t.R.Set(set)
	if s == nil {
		return Element{}, false
	}
	want := Element{Fields: key}.Key(s.Fields)
	for _, e := range s.Elements {
		if e.Key(s.Fields) == want {
			return e, true
		}
	}
	return Element{}, false
}

// familyTracer picks the ruleset of the packet's family.
type familyTracer struct {
	v4, v6 *Ruleset
	aff    map[string]map[netip.Addr]bool
}

// NewTracer returns a flowspec.Tracer over both families' rulesets; it
// remembers affinity across packets, as the kernel's dynamic sets do.
func NewTracer(v4, v6 *Ruleset) flowspec.Tracer {
	return familyTracer{v4: v4, v6: v6, aff: map[string]map[netip.Addr]bool{}}
}

func (f familyTracer) Trace(p flowspec.Packet, rnd func(uint32) uint32) flowspec.Result {
	r := f.v4
	if p.Dst.Addr().Is6() {
		r = f.v6
	}
	return Tracer{R: r, aff: f.aff}.Trace(p, rnd)
}
