package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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
// writes and the spellings iptables-save prints them with; a rule with a
// match it does not know is taken as not matching.
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
		for _, j := range jumpRules {
			if !ensureJumps {
				break
			}
			if t, ok := rs.tables[j.table]; !ok || t.chains[j.target()] == nil {
				continue
			}
			if ok, _ := rs.Exists(j.table, j.chain, j.spec...); ok {
				continue
			}
			if err := rs.Insert(j.table, j.chain, 1, j.spec...); err != nil {
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
	// chance, when set, decides each statistic match instead of rnd,
	// given the kernel's threshold out of 2^31 (see Enumerate); path,
	// when set, collects the rules that matched.
	chance func(threshold uint64) bool
	path   *[]Step
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
		switch rs.hook(table, hook, pk) {
		case vDrop:
			stop = &flowspec.Result{Verdict: flowspec.Drop}
		case vReject:
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
func (rs *ruleset) hook(table, name string, pk *packet) verdict {
	t, ok := rs.tables[table]
	if !ok {
		return vAccept
	}
	c, ok := t.chains[name]
	if !ok {
		return vAccept
	}
	if v := t.run(c, pk, 0); v != vContinue {
		return v
	}
	if c.policy == "DROP" {
		return vDrop
	}
	return vAccept
}

func (t *table) run(c *chain, pk *packet, depth int) verdict {
	if depth > maxDepth {
		return vDrop
	}
	for _, r := range c.rules {
		if !matches(r, pk) {
			continue
		}
		target, args := ruleTarget(r)
		if pk.path != nil && target != "" {
			*pk.path = append(*pk.path, Step{Table: t.name, Chain: c.name, rule: r})
		}
		switch target {
		case "":
			continue
		case "ACCEPT":
			return vAccept
		case "DROP":
			return vDrop
		case "REJECT":
			return vReject
		case "RETURN":
			return vContinue
		case "DNAT":
			if to, ok := optArg(args, "--to-destination"); ok {
				if ap, err := parseAddrPort(to, pk.dport); err == nil {
					pk.dst, pk.dport, pk.dnat = ap.Addr(), ap.Port(), true
				}
			}
			return vAccept
		case "MASQUERADE", "SNAT":
			pk.masq = true
			return vAccept
		case "MARK":
			pk.mark = applyMark(pk.mark, args)
			continue
		}
		next, ok := t.chains[target]
		if !ok {
			continue // another extension target: no effect on the verdict
		}
		if v := t.run(next, pk, depth+1); v != vContinue {
			return v
		}
		if slices.Contains(r, "-g") || slices.Contains(r, "--goto") {
			return vContinue
		}
	}
	return vContinue
}

// matches evaluates every match of r, left to right, up to its target.
func matches(r []string, pk *packet) bool {
	module := ""
	for i := 0; i < len(r); i++ {
		neg := false
		if r[i] == "!" {
			neg = true
			i++
			if i >= len(r) {
				return false
			}
		}
		w := r[i]
		if w == "-j" || w == "--jump" || w == "-g" || w == "--goto" {
			return true
		}
		if w == "-m" || w == "--match" {
			if i+1 >= len(r) {
				return false
			}
			module = r[i+1]
			i++
			if module == "recent" {
				// The recent match is one decision over all its options,
				// which iptables-save prints in its own order.
				n, opts, ok := parseRecent(r[i+1:])
				if !ok || !pk.tr.recentMatch(opts, pk) {
					return false
				}
				i += n
			}
			continue
		}
		n, ok := optionArgs(w)
		if !ok || i+n >= len(r) {
			return false
		}
		args := r[i+1 : i+1+n]
		i += n
		m, known := matchOne(module, w, args, pk)
		if !known || m == neg {
			return false
		}
	}
	return true
}

// optionArgs says how many arguments option w takes.
func optionArgs(w string) (int, bool) {
	switch w {
	case "--rcheck", "--update", "--set", "--remove", "--reap", "--rsource", "--rdest":
		return 0, true
	}
	if strings.HasPrefix(w, "-") {
		return 1, true
	}
	return 0, false
}

// matchOne evaluates one option; known is false for what the tracer does
// not model.
func matchOne(module, w string, args []string, pk *packet) (match, known bool) {
	arg := ""
	if len(args) > 0 {
		arg = args[0]
	}
	switch w {
	case "-s", "--source":
		return prefixContains(arg, pk.src), true
	case "-d", "--destination":
		return prefixContains(arg, pk.dst), true
	case "-p", "--protocol":
		return protoMatches(arg, pk.proto), true
	case "-i", "--in-interface", "-o", "--out-interface":
		return false, true // the tracer knows no interfaces
	}
	if module == "" && (w == "--dport" || w == "--destination-port") {
		module = pk.proto.Lower() // "-p tcp --dport 80": the protocol's implicit match
	}
	switch module {
	case "comment":
		return true, w == "--comment"
	case "tcp", "udp", "sctp":
		switch w {
		case "--dport", "--destination-port":
			return module == pk.proto.Lower() && portInRange(arg, pk.dport), true
		case "--sport", "--source-port":
			return false, false
		}
	case "multiport":
		if w == "--dports" || w == "--destination-ports" {
			for _, p := range strings.Split(arg, ",") {
				if portInRange(p, pk.dport) {
					return true, true
				}
			}
			return false, true
		}
	case "statistic":
		switch w {
		case "--mode":
			return arg == "random", arg == "random"
		case "--probability":
			// xt_statistic: match when a 31-bit random number is below
			// the probability scaled to 2^31, one draw per rule.
			p, err := strconv.ParseFloat(arg, 64)
			if err != nil {
				return false, false
			}
			threshold := uint64(math.Round(p * (1 << 31)))
			if pk.chance != nil {
				return pk.chance(threshold), true
			}
			return uint64(pk.rnd(1<<31)) < threshold, true
		}
	case "mark":
		if w == "--mark" {
			v, m, err := parseMark(arg)
			if err != nil {
				return false, false
			}
			return pk.mark&m == v, true
		}
	case "conntrack", "state":
		if w == "--ctstate" || w == "--state" {
			return slices.Contains(strings.Split(arg, ","), "NEW"), true
		}
	case "addrtype":
		addr := pk.dst
		switch w {
		case "--src-type":
			addr = pk.src
		case "--dst-type":
		default:
			return false, false
		}
		m := false
		for _, typ := range strings.Split(arg, ",") {
			switch typ {
			case "LOCAL":
				m = m || pk.tr.local(addr)
			default:
				return false, false // the tracer knows only which addresses are local
			}
		}
		return m, true
	}
	return false, false
}

func prefixContains(s string, a netip.Addr) bool {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Contains(a)
	}
	if b, err := netip.ParseAddr(s); err == nil {
		return a == b
	}
	return false
}

func protoMatches(s string, p model.Protocol) bool {
	switch s {
	case "all", "0":
		return true
	case "6":
		s = "tcp"
	case "17":
		s = "udp"
	case "132":
		s = "sctp"
	}
	return s == p.Lower()
}

func portInRange(s string, port uint16) bool {
	lo, hi, isRange := strings.Cut(s, ":")
	l, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return false
	}
	h := l
	if isRange {
		if h, err = strconv.ParseUint(hi, 10, 16); err != nil {
			return false
		}
	}
	return uint64(port) >= l && uint64(port) <= h
}

// parseMark parses "value[/mask]"; a missing mask is all ones.
func parseMark(s string) (v, m uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v64, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, err
	}
	m64 := uint64(math.MaxUint32)
	if hasMask {
		if m64, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, err
		}
	}
	return uint32(v64), uint32(m64), nil
}

// applyMark applies a MARK target's options to mark.
func applyMark(mark uint32, args []string) uint32 {
	for i := 0; i+1 < len(args); i += 2 {
		v, m, err := parseMark(args[i+1])
		if err != nil {
			continue
		}
		switch args[i] {
		case "--set-xmark":
			mark = (mark &^ m) ^ v
		case "--set-mark":
			mark = (mark &^ m) | v
		case "--or-mark":
			mark |= v
		case "--xor-mark":
			mark ^= v
		case "--and-mark":
			mark &= v
		}
	}
	return mark
}

// optArg returns the argument of option name in args.
func optArg(args []string, name string) (string, bool) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			return args[i+1], true
		}
	}
	return "", false
}

// parseAddrPort parses a DNAT destination: "ip", "ip:port", "[ip6]:port"
// or "[ip6]"; without a port the packet's port is kept.
func parseAddrPort(s string, port uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad DNAT destination %q", s)
	}
	return netip.AddrPortFrom(a, port), nil
}

// recentOpts are the options of one recent match.
type recentOpts struct {
	name    string
	action  string // --set, --rcheck, --update or --remove
	seconds int
	reap    bool
	dest    bool // --rdest: the list holds destinations
	negate  bool
}

// parseRecent reads the options of a recent match from words, up to the
// next match or target, and says how many words they took; ok is false
// for an option the tracer does not model (--hitcount, --rttl, a mask).
func parseRecent(words []string) (n int, o recentOpts, ok bool) {
	o.name = "DEFAULT"
	for n < len(words) {
		w := words[n]
		neg := false
		if w == "!" && n+1 < len(words) {
			neg, w = true, words[n+1]
		}
		step := 1
		if neg {
			step = 2
		}
		switch w {
		case "--set", "--rcheck", "--update", "--remove":
			o.action, o.negate = w, neg
		case "--reap":
			o.reap = true
		case "--rsource":
			o.dest = false
		case "--rdest":
			o.dest = true
		case "--name", "--seconds", "--mask":
			if neg || n+1 >= len(words) {
				return 0, o, false
			}
			arg := words[n+1]
			step = 2
			switch w {
			case "--name":
				o.name = arg
			case "--seconds":
				v, err := strconv.Atoi(arg)
				if err != nil || v < 0 {
					return 0, o, false
				}
				o.seconds = v
			case "--mask":
				if arg != "255.255.255.255" && arg != "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" {
					return 0, o, false
				}
			}
		case "--hitcount", "--rttl":
			return 0, o, false
		default:
			return n, o, o.action != ""
		}
		n += step
	}
	return n, o, o.action != ""
}

// recentMatch evaluates a recent match as xt_recent does: --set adds or
// refreshes the address and matches; --rcheck matches an address seen
// within --seconds (any time without it); --update is --rcheck that also
// refreshes; --remove matches a listed address and forgets it; --reap
// forgets the addresses older than --seconds.
func (t *Tracer) recentMatch(o recentOpts, pk *packet) bool {
	addr := pk.src
	if o.dest {
		addr = pk.dst
	}
	list := t.recent[o.name]
	if list == nil {
		list = map[netip.Addr]time.Time{}
		t.recent[o.name] = list
	}
	window := time.Duration(o.seconds) * time.Second
	if o.reap && o.seconds > 0 {
		for a, seen := range list {
			if pk.now.Sub(seen) >= window {
				delete(list, a)
			}
		}
	}
	m := false
	switch o.action {
	case "--set":
		list[addr] = pk.now
		m = true
	case "--rcheck", "--update":
		seen, ok := list[addr]
		m = ok && (o.seconds == 0 || pk.now.Sub(seen) < window)
		if m && o.action == "--update" {
			list[addr] = pk.now
		}
	case "--remove":
		_, m = list[addr]
		delete(list, addr)
	}
	return m != o.negate
}
