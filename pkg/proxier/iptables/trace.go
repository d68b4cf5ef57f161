package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Tracer evaluates iptables rules for the first packet of a connection,
// the way the kernel walks them: nat PREROUTING (or OUTPUT for a packet
// the node sends), then filter FORWARD (or OUTPUT), then nat POSTROUTING.
// It understands the matches and targets proxyd writes and the spellings
// iptables-save prints them with; a rule with a match it does not know is
// taken as not matching.
type Tracer struct {
	fams map[model.IPFamily]*ruleset
}

var _ flowspec.Tracer = (*Tracer)(nil)

// NewTracer parses one text per family, restore input or iptables-save
// output, into a fresh set of tables, then ensures proxyd's jump rules as
// the Proxier does (inserted at the top unless already there), since
// restore input does not carry them. A nil text leaves its family empty.
func NewTracer(v4, v6 []byte) (*Tracer, error) {
	t := &Tracer{fams: map[model.IPFamily]*ruleset{}}
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
	pk := &packet{src: p.Src, dst: p.Dst.Addr(), dport: p.Dst.Port(), proto: p.Proto, rnd: rnd}
	natHook, filterHook := "PREROUTING", "FORWARD"
	if p.FromNode {
		natHook, filterHook = "OUTPUT", "OUTPUT"
	}
	res := flowspec.Result{Verdict: flowspec.Untouched}
	if rs == nil {
		return res
	}
	for _, step := range []struct{ table, hook string }{{tableNAT, natHook}, {tableFilter, filterHook}, {tableNAT, "POSTROUTING"}} {
		switch rs.hook(step.table, step.hook, pk) {
		case vDrop:
			return flowspec.Result{Verdict: flowspec.Drop}
		case vReject:
			return flowspec.Result{Verdict: flowspec.Reject}
		}
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
	case "recent":
		switch w {
		case "--rcheck", "--update":
			return false, true // the first packet: no client was seen yet
		case "--set", "--remove", "--reap", "--rsource", "--rdest", "--name", "--seconds", "--mask", "--hitcount":
			return true, true
		}
	case "addrtype":
		if w == "--dst-type" || w == "--src-type" {
			return false, true // no address is local to the tracer
		}
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
