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
func NewTracer(v4, v6 []byte) (*Tracer, error) {
	t := &Tracer{fams: map[model.IPFamily]*ruleset{}, local: flowspec.NodeLocal, now: time.Now,
		recent: map[string]map[netip.Addr]time.Time{}}
	for fam, text := range map[model.IPFamily][]byte{model.IPv4: v4, model.IPv6: v6} {
		rs := newRuleset()
		if err := rs.restore(text, false); err != nil {
			return nil, fmt.Errorf("parse %v rules: %w", fam, err)
		}
		for _, j := range jumpRules {
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
	// stop says the chain being run returned (RETURN, or the end of a
	// chain reached by goto).
	stop bool
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
	rs := t.fams[model.FamilyOf(p.Dst.Addr())]
	pk := &packet{src: p.Src, dst: p.Dst.Addr(), dport: p.Dst.Port(), proto: p.Proto, rnd: rnd, tr: t, now: t.now()}
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

// matches evaluates the matches of r, left to right, up to its target,
// as the kernel does: after the first that fails, the rest have no effect
// (no random draw, no recent list updated), but they are still checked,
// so an option the tracer does not know is reported wherever it is.
func matches(r []string, pk *packet) (bool, error) {
	module := ""
	all := true
	for i := 0; i < len(r); i++ {
		neg := false
		if r[i] == "!" {
			neg = true
			i++
			if i >= len(r) {
				return false, fmt.Errorf("a \"!\" at the end of the rule")
			}
		}
		w := r[i]
		if w == "-j" || w == "--jump" || w == "-g" || w == "--goto" {
			if neg {
				return false, fmt.Errorf("a negated %s", w)
			}
			return all, nil
		}
		if w == "-m" || w == "--match" {
			if neg || i+1 >= len(r) {
				return false, fmt.Errorf("a bad %s", w)
			}
			module = r[i+1]
			i++
			if !knownModules[module] {
				return false, fmt.Errorf("match module %q is not modelled", module)
			}
			if module == "recent" {
				// The recent match is one decision over all its options,
				// which iptables-save prints in its own order.
				n, opts, err := parseRecent(r[i+1:])
				if err != nil {
					return false, err
				}
				all = all && pk.tr.recentMatch(opts, pk)
				i += n
			}
			continue
		}
		n, err := optionArgs(w)
		if err != nil {
			return false, err
		}
		if i+n >= len(r) {
			return false, fmt.Errorf("option %s lacks its argument", w)
		}
		args := r[i+1 : i+1+n]
		i += n
		m, err := matchOne(module, w, args, pk, all)
		if err != nil {
			return false, err
		}
		all = all && m != neg
	}
	return false, fmt.Errorf("no target")
}

// knownModules are the match modules the tracer evaluates.
var knownModules = map[string]bool{
	"comment": true, "tcp": true, "udp": true, "sctp": true, "multiport": true, "statistic": true,
	"mark": true, "conntrack": true, "state": true, "addrtype": true, "recent": true,
}

// optionArgs says how many arguments option w takes.
func optionArgs(w string) (int, error) {
	if !strings.HasPrefix(w, "-") {
		return 0, fmt.Errorf("%q is not an option", w)
	}
	return 1, nil
}

// matchOne evaluates one option of module (the last -m, "" before any);
// an option the tracer does not model is an error. Without eval it only
// checks the option and has no side effect.
func matchOne(module, w string, args []string, pk *packet, eval bool) (bool, error) {
	arg := args[0]
	switch w {
	case "-s", "--source":
		return prefixContains(arg, pk.src)
	case "-d", "--destination":
		return prefixContains(arg, pk.dst)
	case "-p", "--protocol":
		return protoMatches(arg, pk.proto)
	}
	unknown := fmt.Errorf("option %s of match %q is not modelled", w, module)
	switch module {
	case "comment":
		if w == "--comment" {
			return true, nil
		}
	case "tcp", "udp", "sctp":
		if w == "--dport" || w == "--destination-port" {
			in, err := portInRange(arg, pk.dport)
			return module == pk.proto.Lower() && in, err
		}
	case "multiport":
		if w == "--dports" || w == "--destination-ports" {
			m := false
			for _, p := range strings.Split(arg, ",") {
				in, err := portInRange(p, pk.dport)
				if err != nil {
					return false, err
				}
				m = m || in
			}
			return m, nil
		}
	case "statistic":
		switch w {
		case "--mode":
			if arg != "random" {
				return false, fmt.Errorf("statistic mode %q is not modelled", arg)
			}
			return true, nil
		case "--probability":
			// xt_statistic: match when a 31-bit random number is below
			// the probability scaled to 2^31, one draw per rule.
			p, err := strconv.ParseFloat(arg, 64)
			if err != nil || p < 0 || p > 1 {
				return false, fmt.Errorf("bad probability %q", arg)
			}
			if !eval {
				return false, nil
			}
			threshold := uint64(math.Round(p * (1 << 31)))
			return uint64(pk.rnd(1<<31)) < threshold, nil
		}
	case "mark":
		if w == "--mark" {
			v, m, err := parseMark(arg)
			return pk.mark&m == v, err
		}
	case "conntrack", "state":
		if w == "--ctstate" || w == "--state" {
			return pk.ctstate(arg)
		}
	case "addrtype":
		addr := pk.dst
		switch w {
		case "--src-type":
			addr = pk.src
		case "--dst-type":
		default:
			return false, unknown
		}
		m := false
		for _, typ := range strings.Split(arg, ",") {
			if typ != "LOCAL" {
				return false, fmt.Errorf("address type %q is not modelled (only LOCAL)", typ)
			}
			m = m || pk.tr.local(addr)
		}
		return m, nil
	}
	return false, unknown
}

// ctstate matches a conntrack state list against the first packet of a
// new connection: NEW, and DNAT once nat rewrote its destination.
func (pk *packet) ctstate(list string) (bool, error) {
	m := false
	for _, st := range strings.Split(list, ",") {
		switch st {
		case "NEW":
			m = true
		case "DNAT":
			m = m || pk.dnat
		case "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT":
		default:
			return false, fmt.Errorf("conntrack state %q is not modelled", st)
		}
	}
	return m, nil
}

func prefixContains(s string, a netip.Addr) (bool, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Contains(a), nil
	}
	if b, err := netip.ParseAddr(s); err == nil {
		return a == b, nil
	}
	return false, fmt.Errorf("bad address %q", s)
}

func protoMatches(s string, p model.Protocol) (bool, error) {
	switch s {
	case "all", "0":
		return true, nil
	case "6":
		s = "tcp"
	case "17":
		s = "udp"
	case "132":
		s = "sctp"
	case "tcp", "udp", "sctp":
	case "icmp", "1", "ipv6-icmp", "icmpv6", "58":
		return false, nil
	default:
		return false, fmt.Errorf("protocol %q is not modelled", s)
	}
	return s == p.Lower(), nil
}

func portInRange(s string, port uint16) (bool, error) {
	lo, hi, isRange := strings.Cut(s, ":")
	l, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return false, fmt.Errorf("bad port %q", s)
	}
	h := l
	if isRange {
		if h, err = strconv.ParseUint(hi, 10, 16); err != nil {
			return false, fmt.Errorf("bad port range %q", s)
		}
	}
	return uint64(port) >= l && uint64(port) <= h, nil
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
func applyMark(mark uint32, args []string) (uint32, error) {
	if len(args) == 0 || len(args)%2 != 0 {
		return mark, fmt.Errorf("MARK needs option-value pairs, got %v", args)
	}
	for i := 0; i+1 < len(args); i += 2 {
		v, m, err := parseMark(args[i+1])
		if err != nil {
			return mark, err
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
		default:
			return mark, fmt.Errorf("MARK option %q is not modelled", args[i])
		}
	}
	return mark, nil
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
// next match or target, and says how many words they took; an option the
// tracer does not model (--hitcount, --rttl, a mask) is an error.
func parseRecent(words []string) (n int, o recentOpts, err error) {
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
				return 0, o, fmt.Errorf("recent: bad %s", w)
			}
			arg := words[n+1]
			step = 2
			switch w {
			case "--name":
				o.name = arg
			case "--seconds":
				v, err := strconv.Atoi(arg)
				if err != nil || v < 0 {
					return 0, o, fmt.Errorf("recent: bad --seconds %q", arg)
				}
				o.seconds = v
			case "--mask":
				if arg != "255.255.255.255" && arg != "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" {
					return 0, o, fmt.Errorf("recent: --mask %s is not modelled", arg)
				}
			}
		case "--hitcount", "--rttl":
			return 0, o, fmt.Errorf("recent: %s is not modelled", w)
		default:
			return n, o, recentAction(o)
		}
		n += step
	}
	return n, o, recentAction(o)
}

func recentAction(o recentOpts) error {
	if o.action == "" {
		return fmt.Errorf("recent without --set, --rcheck, --update or --remove")
	}
	return nil
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
