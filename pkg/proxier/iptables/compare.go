package iptables

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Drift compares one family's rules as the kernel lists them
// (iptables-save) with what proxyd means to have there (Render's output)
// and describes each difference: a proxyd chain missing or extra, a chain
// whose rules differ, a jump rule from a built-in chain missing. Only
// proxyd's own chains and jumps are compared. Nothing means no drift.
func Drift(kernel, intended []byte) ([]string, error) {
	have, want := newRuleset(), newRuleset()
	if err := have.restore(kernel, false); err != nil {
		return nil, fmt.Errorf("parse the kernel's rules: %w", err)
	}
	if err := want.restore(intended, false); err != nil {
		return nil, fmt.Errorf("parse the intended rules: %w", err)
	}
	var out []string
	for _, table := range []string{tableNAT, tableFilter} {
		hc, wc := have.proxydChains(table), want.proxydChains(table)
		for _, name := range wc {
			if !slices.Contains(hc, name) {
				out = append(out, fmt.Sprintf("%s: chain %s is missing", table, name))
				continue
			}
			out = append(out, chainDrift(table, have.tables[table].chains[name], want.tables[table].chains[name])...)
		}
		for _, name := range hc {
			if !slices.Contains(wc, name) {
				out = append(out, fmt.Sprintf("%s: chain %s is not proxyd's to have", table, name))
			}
		}
	}
	for _, j := range jumpRules {
		if t, ok := want.tables[j.table]; !ok || t.chains[j.target()] == nil {
			continue
		}
		if ok, _ := have.Exists(j.table, j.chain, j.spec...); !ok {
			out = append(out, fmt.Sprintf("%s: the jump from %s is missing: -A %s %s", j.table, j.chain, j.chain, joinWords(j.spec)))
		}
	}
	return out, nil
}

// chainDrift lists the rules of one chain that differ, in order.
func chainDrift(table string, have, want *chain) []string {
	var out []string
	hr, wr := ruleTexts(have), ruleTexts(want)
	for _, r := range wr {
		if !slices.Contains(hr, r) {
			out = append(out, fmt.Sprintf("%s: rule missing: -A %s %s", table, want.name, r))
		}
	}
	for _, r := range hr {
		if !slices.Contains(wr, r) {
			out = append(out, fmt.Sprintf("%s: rule not proxyd's: -A %s %s", table, have.name, r))
		}
	}
	if len(out) == 0 && !slices.Equal(hr, wr) {
		out = append(out, fmt.Sprintf("%s: chain %s has proxyd's rules in another order", table, want.name))
	}
	return out
}

func ruleTexts(c *chain) []string {
	out := make([]string, len(c.rules))
	for i, r := range c.rules {
		out[i] = joinWords(canonical(r))
	}
	return out
}

// canonical spells a rule the way iptables-save prints what the kernel
// holds, so that restore input and a save dump of the same rule compare
// equal: marks in plain hex, a MARK target as --set-xmark, a statistic
// probability as the kernel's threshold printed with 11 decimals, and a
// recent match's options in one order with their defaults left out.
func canonical(rule []string) []string {
	out := make([]string, 0, len(rule))
	target := ""
	for i := 0; i < len(rule); i++ {
		w := rule[i]
		switch {
		case w == "-m" && i+2 < len(rule) && rule[i+1] == "recent":
			n, o, err := parseRecent(rule[i+2:])
			if err != nil {
				out = append(out, w)
				continue
			}
			out = append(out, "-m", "recent")
			if o.negate {
				out = append(out, "!")
			}
			out = append(out, o.action)
			if o.seconds > 0 {
				out = append(out, "--seconds", strconv.Itoa(o.seconds))
			}
			if o.reap {
				out = append(out, "--reap")
			}
			out = append(out, "--name", o.name)
			if o.dest {
				out = append(out, "--rdest")
			}
			i += 1 + n
		case w == "-j" || w == "--jump" || w == "-g" || w == "--goto":
			if i+1 < len(rule) {
				target = rule[i+1]
			}
			out = append(out, w)
		case w == "--mark" && i+1 < len(rule):
			if v, m, err := parseMark(rule[i+1]); err == nil {
				i++
				out = append(out, w, hexMark(v, m, m != math.MaxUint32))
				continue
			}
			out = append(out, w)
		case target == "MARK" && i+1 < len(rule) && strings.HasSuffix(w, "-mark"):
			v, m, err := parseMark(rule[i+1])
			if err != nil {
				out = append(out, w)
				continue
			}
			i++
			switch w {
			case "--or-mark":
				m = v
			case "--xor-mark":
				m = 0
			case "--and-mark":
				v, m = 0, ^v
			case "--set-mark":
				m |= v
			}
			out = append(out, "--set-xmark", hexMark(v, m, true))
		case w == "--probability" && i+1 < len(rule):
			p, err := strconv.ParseFloat(rule[i+1], 64)
			if err != nil {
				out = append(out, w)
				continue
			}
			i++
			out = append(out, w, strconv.FormatFloat(math.Round(p*(1<<31))/(1<<31), 'f', 11, 64))
		default:
			out = append(out, w)
		}
	}
	return out
}

func hexMark(v, m uint32, withMask bool) string {
	if !withMask {
		return "0x" + strconv.FormatUint(uint64(v), 16)
	}
	return "0x" + strconv.FormatUint(uint64(v), 16) + "/0x" + strconv.FormatUint(uint64(m), 16)
}

// SaveText is what iptables-save of family fam prints after the Proxier
// programmed s under cfg into empty tables: the rendering plus the jump
// rules from the built-in chains (which a full write inserts), in iptables-save's layout (though in
// the rendering's spelling; see Drift).
func SaveText(s *model.State, cfg proxier.Config, fam model.IPFamily) ([]byte, error) {
	rs := newRuleset()
	if err := rs.restore(Render(s, cfg, fam), true); err != nil {
		return nil, err
	}
	if err := insertJumps(rs); err != nil {
		return nil, err
	}
	return rs.saveAll(), nil
}
