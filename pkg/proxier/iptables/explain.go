package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Step is one rule a traced packet matched, with a target.
type Step struct {
	Table, Chain string
	rule         []string
}

// String is the rule as iptables-save prints it.
func (s Step) String() string { return "-A " + s.Chain + " " + joinWords(s.rule) }

// Comment returns the rule's --comment, or "".
func (s Step) Comment() string {
	c, _ := optArg(s.rule, "--comment")
	return c
}

// Target returns the rule's target: a chain, or an extension like DNAT.
func (s Step) Target() string {
	t, _ := ruleTarget(s.rule)
	return t
}

// Arg returns the argument of option name in the rule (e.g. "-s").
func (s Step) Arg(name string) (string, bool) {
	for i := 0; i+1 < len(s.rule); i++ {
		if s.rule[i] == name {
			return s.rule[i+1], true
		}
	}
	return "", false
}

// Negated reports whether option name is negated ("! -s ...").
func (s Step) Negated(name string) bool {
	for i := 1; i < len(s.rule); i++ {
		if s.rule[i] == name && s.rule[i-1] == "!" {
			return true
		}
	}
	return false
}

// Outcome is one thing the rules can do to a packet, with its exact
// probability and the rules that led there.
type Outcome struct {
	flowspec.Result
	Probability float64
	Path        []Step
}

// maxOutcomes bounds Enumerate: proxyd's rules have one branch per
// endpoint, so this is far above any real Service.
const maxOutcomes = 1 << 16

// Enumerate follows p through every branch of the statistic matches
// instead of drawing random numbers, and returns each distinct result
// with its probability: the product, along its branch, of each match's
// kernel threshold out of 2^31 (or its complement), which is what
// xt_statistic compares a 31-bit random number with. Equal results reached
// by several branches are summed, keeping the path of the likeliest. The
// recent lists are the same for every branch and unchanged afterwards. A
// rule the tracer cannot follow on any branch is an error.
func (t *Tracer) Enumerate(p flowspec.Packet) ([]Outcome, error) {
	saved := t.recent
	defer func() { t.recent = saved }()
	var out []Outcome
	type draw struct {
		threshold uint64
		match     bool
	}
	var script []bool // decisions of the first draws of the next branch
	for range maxOutcomes {
		t.recent = cloneRecent(saved)
		var draws []draw
		prob := 1.0
		var path []Step
		pk := &packet{path: &path, rnd: func(uint32) uint32 { return 0 }}
		pk.chance = func(threshold uint64) bool {
			match := true
			if k := len(draws); k < len(script) {
				match = script[k]
			}
			switch {
			case threshold == 0:
				match = false
			case threshold >= 1<<31:
				match = true
			}
			draws = append(draws, draw{threshold, match})
			if p := float64(threshold) / (1 << 31); match {
				prob *= p
			} else {
				prob *= 1 - p
			}
			return match
		}
		res := t.trace(p, pk)
		if res.Err != nil {
			return nil, res.Err
		}
		out = mergeOutcome(out, Outcome{Result: res, Probability: prob, Path: path})
		i := len(draws) - 1
		for i >= 0 && !(draws[i].match && draws[i].threshold < 1<<31) {
			i--
		}
		if i < 0 {
			break
		}
		script = script[:0]
		for _, d := range draws[:i] {
			script = append(script, d.match)
		}
		script = append(script, false)
	}
	slices.SortStableFunc(out, func(a, b Outcome) int { return a.Endpoint.Compare(b.Endpoint) })
	return out, nil
}

func mergeOutcome(out []Outcome, o Outcome) []Outcome {
	for i := range out {
		if out[i].Result == o.Result {
			if o.Probability > out[i].Probability {
				out[i].Path = o.Path
			}
			out[i].Probability += o.Probability
			return out
		}
	}
	return append(out, o)
}

func cloneRecent(r map[string]map[netip.Addr]time.Time) map[string]map[netip.Addr]time.Time {
	out := make(map[string]map[netip.Addr]time.Time, len(r))
	for name, list := range r {
		l := make(map[netip.Addr]time.Time, len(list))
		for a, t := range list {
			l[a] = t
		}
		out[name] = l
	}
	return out
}

// SetRecent puts addr in the recent match's list name as last seen at
// lastSeen, as the kernel's /proc/net/xt_recent/NAME shows it, so traces
// follow the session affinity the kernel holds.
func (t *Tracer) SetRecent(name string, addr netip.Addr, lastSeen time.Time) {
	if t.recent[name] == nil {
		t.recent[name] = map[netip.Addr]time.Time{}
	}
	t.recent[name][addr] = lastSeen
}

// NewKernelTracer is NewTracer for iptables-save output of a live kernel:
// it traces the rules exactly as they are, adding no jump rule, so a jump
// that someone deleted is missed by the trace as by the kernel.
func NewKernelTracer(v4, v6 []byte) (*Tracer, error) { return newTracer(v4, v6, false) }

// AffinityTarget returns the endpoint the recent list name sends a client
// back to, and the affinity timeout in seconds: the DNAT of the chain the
// list is named after (proxyd names each list after its endpoint chain),
// and the --seconds of the rule that checks it. ok is false for a list
// that is not proxyd's.
func (t *Tracer) AffinityTarget(fam model.IPFamily, name string) (ep netip.AddrPort, seconds int, ok bool) {
	rs := t.fams[fam]
	if rs == nil || !strings.HasPrefix(name, chainPrefix) {
		return ep, 0, false
	}
	nat := rs.tables[tableNAT]
	if nat == nil || nat.chains[name] == nil {
		return ep, 0, false
	}
	for _, r := range nat.chains[name].rules {
		if target, args := ruleTarget(r); target == "DNAT" {
			if to, found := optArg(args, "--to-destination"); found {
				if ap, err := parseAddrPort(to, 0); err == nil {
					ep, ok = ap, true
				}
			}
		}
	}
	for _, cn := range nat.order {
		for _, r := range nat.chains[cn].rules {
			if target, _ := ruleTarget(r); target != name || !slices.Contains(r, "--rcheck") {
				continue
			}
			if s, found := optArg(r, "--seconds"); found {
				_, _ = fmt.Sscan(s, &seconds)
			}
		}
	}
	return ep, seconds, ok
}

// ChainRules returns the rules of one chain as the tracer holds them.
func (t *Tracer) ChainRules(fam model.IPFamily, table, name string) []Step {
	rs := t.fams[fam]
	if rs == nil || rs.tables[table] == nil || rs.tables[table].chains[name] == nil {
		return nil
	}
	var out []Step
	for _, r := range rs.tables[table].chains[name].rules {
		out = append(out, Step{Table: table, Chain: name, rule: r})
	}
	return out
}
