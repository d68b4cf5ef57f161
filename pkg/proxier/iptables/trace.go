package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Tracer evaluates iptables rules for the first packet of a connection,
// the way the kernel walks them: nat PREROUTING, then filter INPUT for a
// packet to one of the node's addresses or filter FORWARD with nat
// POSTROUTING for one that is routed on; for a packet the node sends, nat
// OUTPUT, filter OUTPUT, nat POSTROUTING and, when it is for the node
// itself, filter INPUT. It understands the matches and targets proxyd
// writes and the spellings iptables-save prints them with. A rule with a
// match, option or target it does not model makes the trace fail
// (Result.Err): guessing "no match" or "no effect" would let a typo in
// the rendering pass the flow spec.
//
// Like the kernel, a Tracer has state: the recent match's lists (session
// affinity) remember the sources added by --set, per list name, across
// the packets it traces. It is not safe for concurrent use.
type Tracer struct {
	fams map[model.IPFamily]*ruleset
	// local reports whether an address is the node's (addrtype LOCAL).
	local func(netip.Addr) bool
	now   func() time.Time
	// recent holds the recent match's lists: name → source → last seen.
	recent map[string]map[netip.Addr]time.Time
}

// SetLocal replaces the test of which addresses are the node's, by
// default flowspec.NodeLocal.
func (t *Tracer) SetLocal(local func(netip.Addr) bool) { t.local = local }

// SetClock replaces the clock the recent match's --seconds is measured
// with, by default time.Now.
func (t *Tracer) SetClock(now func() time.Time) { t.now = now }

var _ flowspec.Tracer = (*Tracer)(nil)

// NewTracer parses one text per family, restore input or iptables-save
// output, into a fresh set of tables, then ensures proxyd's jump rules as
// the Proxier does (inserted at the top unless already there), since
// restore input does not carry them. A nil text leaves its family empty.
func NewTracer(v4, v6 []byte) (*Tracer, error) { return newTracer(v4, v6, true) }

func newTracer(v4, v6 []byte, ensureJumps bool) (*Tracer, error) {
	t := &Tracer{fams: map[model.IPFamily]*ruleset{}, local: flowspec.NodeLocal, now: time.Now,
		recent: map[string]map[netip.Addr]time.Time{}}
	for fam, text := range map[model.IPFamily][]byte{model.IPv4: v4, model.IPv6: v6} {
		rs := newRuleset()
		if err := rs.restore(text, false); err != nil {
			return nil, fmt.Errorf("parse %v rules: %w", fam, err)
		}
		if ensureJumps {
			if err := insertJumps(rs); err != nil {
				return nil, fmt.Errorf("%v rules: %w", fam, err)
			}
		}
		t.fams[fam] = rs
	}
	return t, nil
}

// TracerFor renders s under cfg for both families and returns the Tracer
// of the result.
func TracerFor(s *model.State, cfg proxier.Config) (*Tracer, error) {
	return NewTracer(Render(s, cfg, model.IPv4), Render(s, cfg, model.IPv6))
}

// packet is the traced packet's state as the rules change it.
type packet struct {
	src, dst netip.Addr
	dport    uint16
	proto    model.Protocol
	mark     uint32
	dnat     bool
	masq     bool
	rnd      func(uint32) uint32
	tr       *Tracer
	now      time.Time
	// stop says the chain being run returned (RETURN, or the end of a
	// chain reached by goto).
	stop bool
	// chance, when set, decides each statistic match instead of rnd,
	// given the kernel's threshold out of 2^31 (see Enumerate); path,
	// when set, collects the rules that matched.
	chance func(threshold uint64) bool
	path   *[]Step
	chain  string // the chain being run, for path
}

// verdicts of a chain walk.
type verdict int

const (
	vContinue verdict = iota // fell off the end of a user chain, or RETURN
	vAccept
	vDrop
	vReject
)

// maxDepth bounds chain nesting, like the kernel's jump stack.
const maxDepth = 64

// Trace follows p through the rules.
func (t *Tracer) Trace(p flowspec.Packet, rnd func(n uint32) uint32) flowspec.Result {
	return t.trace(p, &packet{rnd: rnd})
}

// trace follows p through the rules with pk's random source and hooks.
func (t *Tracer) trace(p flowspec.Packet, pk *packet) flowspec.Result {
	rs := t.fams[model.FamilyOf(p.Dst.Addr())]
	pk.src, pk.dst, pk.dport, pk.proto, pk.tr, pk.now = p.Src, p.Dst.Addr(), p.Dst.Port(), p.Proto, t, t.now()
	res := flowspec.Result{Verdict: flowspec.Untouched}
	if rs == nil {
		return res
	}
	var stop *flowspec.Result
	run := func(table, hook string) bool {
		v, err := rs.hook(table, hook, pk)
		switch {
		case err != nil:
			stop = &flowspec.Result{Err: fmt.Errorf("%v %s %s: %w", model.FamilyOf(pk.dst), table, hook, err)}
		case v == vDrop:
			stop = &flowspec.Result{Verdict: flowspec.Drop}
		case v == vReject:
			stop = &flowspec.Result{Verdict: flowspec.Reject}
		}
		return stop == nil
	}
	// Routing comes after nat: a packet for one of the node's addresses
	// is delivered (filter INPUT, and no POSTROUTING unless the node sent
	// it, through loopback); any other is routed on.
	if p.FromNode {
		_ = run(tableNAT, "OUTPUT") && run(tableFilter, "OUTPUT") && run(tableNAT, "POSTROUTING") &&
			(!t.local(pk.dst) || run(tableFilter, "INPUT"))
	} else if run(tableNAT, "PREROUTING") {
		if t.local(pk.dst) {
			run(tableFilter, "INPUT")
		} else {
			_ = run(tableFilter, "FORWARD") && run(tableNAT, "POSTROUTING")
		}
	}
	if stop != nil {
		return *stop
	}
	if pk.dnat {
		res.Verdict = flowspec.DNAT
		res.Endpoint = netip.AddrPortFrom(pk.dst, pk.dport)
	}
	res.Masquerade = pk.masq
	return res
}

// hook runs a built-in chain; falling off its end applies its policy.
func (rs *ruleset) hook(table, name string, pk *packet) (verdict, error) {
	t, ok := rs.tables[table]
	if !ok {
		return vAccept, nil
	}
	c, ok := t.chains[name]
	if !ok {
		return vAccept, nil
	}
	if v, err := t.run(c, pk, 0); err != nil || v != vContinue {
		return v, err
	}
	if c.policy == "DROP" {
		return vDrop, nil
	}
	return vAccept, nil
}

func (t *table) run(c *chain, pk *packet, depth int) (verdict, error) {
	if depth > maxDepth {
		return vContinue, fmt.Errorf("chain %s: jumps nest deeper than %d", c.name, maxDepth)
	}
	outer := pk.chain
	pk.chain = c.name
	defer func() { pk.chain = outer }()
	for i, r := range c.rules {
		v, err := t.step(r, pk, depth)
		if err != nil {
			return v, fmt.Errorf("%s rule %d (%s): %w", c.name, i+1, joinWords(r), err)
		}
		if v != vContinue || pk.stop {
			pk.stop = false
			return v, nil
		}
	}
	return vContinue, nil
}

// step applies one rule: vContinue goes on with the next rule unless
// pk.stop says the chain returned.
func (t *table) step(r []string, pk *packet, depth int) (verdict, error) {
	ok, err := matches(r, pk)
	if err != nil || !ok {
		return vContinue, err
	}
	target, args := ruleTarget(r)
	if pk.path != nil && target != "" {
		*pk.path = append(*pk.path, Step{Table: t.name, Chain: pk.chain, rule: r})
	}
	switch target {
	case "":
		return vContinue, nil
	case "ACCEPT":
		return vAccept, nil
	case "DROP":
		return vDrop, nil
	case "REJECT":
		if err := checkOptions(args, map[string]bool{"--reject-with": true}); err != nil {
			return vContinue, err
		}
		return vReject, nil
	case "RETURN":
		pk.stop = true
		return vContinue, nil
	case "DNAT":
		to, ok := optArg(args, "--to-destination")
		if !ok {
			return vContinue, fmt.Errorf("DNAT without --to-destination")
		}
		ap, err := parseAddrPort(to, pk.dport)
		if err != nil {
			return vContinue, err
		}
		pk.dst, pk.dport, pk.dnat = ap.Addr(), ap.Port(), true
		return vAccept, nil
	case "MASQUERADE":
		if err := checkOptions(args, map[string]bool{"--random-fully": false, "--random": false}); err != nil {
			return vContinue, err
		}
		pk.masq = true
		return vAccept, nil
	case "MARK":
		m, err := applyMark(pk.mark, args)
		pk.mark = m
		return vContinue, err
	}
	next, ok := t.chains[target]
	if !ok {
		return vContinue, fmt.Errorf("target %q is neither a chain nor a target the tracer models", target)
	}
	if len(args) > 0 {
		return vContinue, fmt.Errorf("unexpected words after the jump to %s: %v", target, args)
	}
	v, err := t.run(next, pk, depth+1)
	if err != nil || v != vContinue {
		return v, err
	}
	if slices.Contains(r, "-g") || slices.Contains(r, "--goto") {
		pk.stop = true
	}
	return vContinue, nil
}

// checkOptions fails on an option of a target that is not in known
// (option → takes an argument).
func checkOptions(args []string, known map[string]bool) error {
	for i := 0; i < len(args); i++ {
		hasArg, ok := known[args[i]]
		if !ok {
			return fmt.Errorf("target option %q is not modelled", args[i])
		}
		if hasArg {
			i++
		}
	}
	return nil
}
