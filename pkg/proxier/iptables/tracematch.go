package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// The matches, options and target arguments the Tracer evaluates, each
// failing on what it does not model.

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
	"mark": true, "conntrack": true, "state": true, "addrtype": true, "recent": true, "nfacct": true,
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
	case "nfacct":
		// It counts the packet and always matches.
		if w == "--nfacct-name" {
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
			if pk.chance != nil {
				return pk.chance(threshold), nil
			}
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
