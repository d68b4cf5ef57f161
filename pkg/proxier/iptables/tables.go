package iptables

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// builtinChains are the built-in chains of the tables this package models.
var builtinChains = map[string][]string{
	"raw":       {"PREROUTING", "OUTPUT"},
	"mangle":    {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
}

// targetHooks lists, for the terminal targets that the kernel restricts,
// the table they are valid in and the built-in chains they may be reached
// from; a target not listed is valid anywhere.
var targetHooks = map[string]struct {
	table string
	hooks []string
}{
	"DNAT":       {tableNAT, []string{"PREROUTING", "OUTPUT"}},
	"REDIRECT":   {tableNAT, []string{"PREROUTING", "OUTPUT"}},
	"SNAT":       {tableNAT, []string{"POSTROUTING", "INPUT"}},
	"MASQUERADE": {tableNAT, []string{"POSTROUTING"}},
	"REJECT":     {tableFilter, []string{"INPUT", "FORWARD", "OUTPUT"}},
}

// knownTargets are the target extensions a rule may name besides chains.
var knownTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "REDIRECT": true, "MARK": true, "CONNMARK": true, "LOG": true, "NFLOG": true,
	"QUEUE": true, "NFQUEUE": true, "CT": true, "NOTRACK": true, "TRACE": true, "TCPMSS": true,
	"CHECKSUM": true, "CLASSIFY": true, "TPROXY": true, "AUDIT": true,
}

// ruleset is an in-memory copy of one family's iptables tables. It applies
// restore input and single-rule commands the way the kernel does: a batch
// is all or nothing; a jump to a missing chain, deleting a chain that is
// not empty or still referenced, and a target reached from a hook that
// does not allow it all fail the whole batch.
type ruleset struct {
	tables map[string]*table
	// counters, when set, says which nfacct counters exist: a rule naming
	// another is refused, as xt_nfacct refuses it.
	counters func(name string) bool
}

type table struct {
	name   string
	chains map[string]*chain
	order  []string // built-in chains first, then user chains by creation
}

type chain struct {
	name    string
	builtin bool
	policy  string
	rules   [][]string
}

func newRuleset() *ruleset { return &ruleset{tables: map[string]*table{}} }

// table returns the named table, creating it with its built-in chains as
// the kernel does on first use.
func (rs *ruleset) table(name string) (*table, error) {
	if t, ok := rs.tables[name]; ok {
		return t, nil
	}
	builtins, ok := builtinChains[name]
	if !ok {
		return nil, fmt.Errorf("table %q does not exist", name)
	}
	t := &table{name: name, chains: map[string]*chain{}}
	for _, c := range builtins {
		t.chains[c] = &chain{name: c, builtin: true, policy: "ACCEPT"}
		t.order = append(t.order, c)
	}
	rs.tables[name] = t
	return t, nil
}

func (rs *ruleset) clone() *ruleset {
	out := newRuleset()
	for name, t := range rs.tables {
		nt := &table{name: name, chains: make(map[string]*chain, len(t.chains)), order: slices.Clone(t.order)}
		for cn, c := range t.chains {
			// Rules are never modified in place, only replaced, so the
			// rule slices themselves can be shared.
			nt.chains[cn] = &chain{name: c.name, builtin: c.builtin, policy: c.policy, rules: slices.Clone(c.rules)}
		}
		out.tables[name] = nt
	}
	return out
}

// restore applies restore input. With noflush false, each table named in
// the input is emptied first, as plain iptables-restore does.
func (rs *ruleset) restore(data []byte, noflush bool) error {
	blocks, err := parseRestore(data)
	if err != nil {
		return err
	}
	next := rs.clone()
	for _, b := range blocks {
		t, err := next.table(b.name)
		if err != nil {
			return fmt.Errorf("line %d: %w", b.line, err)
		}
		if !noflush {
			t.reset()
		}
		for _, o := range b.ops {
			if err := rs.counted(o.rule); err != nil {
				return fmt.Errorf("line %d: %w", o.line, err)
			}
			if err := t.apply(o); err != nil {
				return fmt.Errorf("line %d: %w", o.line, err)
			}
		}
		if err := t.validate(); err != nil {
			return fmt.Errorf("commit table %s: %w", b.name, err)
		}
	}
	rs.tables = next.tables
	return nil
}

func (t *table) reset() {
	for _, name := range slices.Clone(t.order) {
		c := t.chains[name]
		if c.builtin {
			c.rules = nil
			continue
		}
		delete(t.chains, name)
	}
	t.order = slices.DeleteFunc(t.order, func(n string) bool { return t.chains[n] == nil })
}

func (t *table) apply(o op) error {
	c := t.chains[o.chain]
	switch o.kind {
	case opChain, opNew:
		if c == nil {
			if len(o.chain) > 28 {
				return fmt.Errorf("chain name %q is longer than 28 characters", o.chain)
			}
			t.chains[o.chain] = &chain{name: o.chain}
			t.order = append(t.order, o.chain)
			return nil
		}
		if o.kind == opNew {
			return fmt.Errorf("chain %s already exists", o.chain)
		}
		c.rules = nil
		if c.builtin && o.policy != "-" {
			c.policy = o.policy
		}
		return nil
	}
	if c == nil {
		return fmt.Errorf("chain %s does not exist in table %s", o.chain, t.name)
	}
	switch o.kind {
	case opAppend:
		return t.insert(c, len(c.rules)+1, o.rule)
	case opInsert:
		return t.insert(c, o.pos, o.rule)
	case opDelete:
		i := c.find(o.rule)
		if i < 0 {
			return fmt.Errorf("no such rule in chain %s: %s", o.chain, joinWords(o.rule))
		}
		c.rules = slices.Delete(c.rules, i, i+1)
	case opFlush:
		c.rules = nil
	case opDelX:
		if c.builtin {
			return fmt.Errorf("cannot delete built-in chain %s", o.chain)
		}
		if len(c.rules) > 0 {
			return fmt.Errorf("cannot delete chain %s: not empty", o.chain)
		}
		if by := t.referrer(o.chain); by != "" {
			return fmt.Errorf("cannot delete chain %s: referenced from %s", o.chain, by)
		}
		delete(t.chains, o.chain)
		t.order = slices.DeleteFunc(t.order, func(n string) bool { return n == o.chain })
	}
	return nil
}

func (t *table) insert(c *chain, pos int, rule []string) error {
	if pos < 1 || pos > len(c.rules)+1 {
		return fmt.Errorf("index %d out of range for chain %s", pos, c.name)
	}
	if target, _ := ruleTarget(rule); target != "" && !knownTargets[target] {
		if _, ok := t.chains[target]; !ok {
			return fmt.Errorf("couldn't load target %q: no chain by that name in table %s", target, t.name)
		}
	}
	c.rules = slices.Insert(c.rules, pos-1, slices.Clone(rule))
	return nil
}

// ruleTarget returns the -j or -g target of rule and its arguments.
func ruleTarget(rule []string) (string, []string) {
	for i := 0; i+1 < len(rule); i++ {
		if rule[i] == "-j" || rule[i] == "--jump" || rule[i] == "-g" || rule[i] == "--goto" {
			return rule[i+1], rule[i+2:]
		}
	}
	return "", nil
}

func (c *chain) find(rule []string) int {
	return slices.IndexFunc(c.rules, func(r []string) bool { return slices.Equal(r, rule) })
}

// referrer names a chain that jumps to name, or returns "".
func (t *table) referrer(name string) string {
	for _, cn := range t.order {
		for _, r := range t.chains[cn].rules {
			if target, _ := ruleTarget(r); target == name {
				return cn
			}
		}
	}
	return ""
}

// validate checks what the kernel checks when a table is replaced: no
// loops, and every restricted target only in its table and reachable only
// from the hooks it supports.
func (t *table) validate() error {
	for _, root := range builtinChains[t.name] {
		if err := t.walk(root, root, map[string]bool{}, map[string]bool{}); err != nil {
			return err
		}
	}
	for _, cn := range t.order {
		for _, r := range t.chains[cn].rules {
			target, _ := ruleTarget(r)
			if h, ok := targetHooks[target]; ok && h.table != t.name {
				return fmt.Errorf("target %s is not valid in table %s (chain %s)", target, t.name, cn)
			}
		}
	}
	return nil
}

// walk checks the chains reachable from one hook; done holds the chains
// already checked from it, so a chain jumped to from many places is
// checked once.
func (t *table) walk(hook, name string, onPath, done map[string]bool) error {
	if onPath[name] {
		return fmt.Errorf("loop through chain %s", name)
	}
	if done[name] {
		return nil
	}
	onPath[name] = true
	defer func() { delete(onPath, name); done[name] = true }()
	for _, r := range t.chains[name].rules {
		target, _ := ruleTarget(r)
		if h, ok := targetHooks[target]; ok && !slices.Contains(h.hooks, hook) {
			return fmt.Errorf("target %s in chain %s is reached from %s, which it does not support", target, name, hook)
		}
		if _, isChain := t.chains[target]; isChain && !knownTargets[target] {
			if err := t.walk(hook, target, onPath, done); err != nil {
				return err
			}
		}
	}
	return nil
}

// save prints one table as iptables-save does (without counters or
// comments); an unknown or never used table prints nothing.
func (rs *ruleset) save(name string) []byte {
	t, ok := rs.tables[name]
	if !ok {
		return nil
	}
	var b bytes.Buffer
	b.WriteString("*" + name + "\n")
	for _, cn := range t.order {
		c := t.chains[cn]
		policy := "-"
		if c.builtin {
			policy = c.policy
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", cn, policy)
	}
	for _, cn := range t.order {
		for _, r := range t.chains[cn].rules {
			b.WriteString("-A " + cn + " " + joinWords(r) + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// saveAll prints every table, sorted by name.
func (rs *ruleset) saveAll() []byte {
	var b bytes.Buffer
	for _, name := range slices.Sorted(maps.Keys(rs.tables)) {
		b.Write(rs.save(name))
	}
	return b.Bytes()
}

// counted refuses a rule that bumps an nfacct counter that does not exist.
func (rs *ruleset) counted(rule []string) error {
	if rs.counters == nil {
		return nil
	}
	for i, w := range rule {
		if w == "--nfacct-name" && i+1 < len(rule) && !rs.counters(rule[i+1]) {
			return fmt.Errorf("nfacct: accounting object %q does not exist", rule[i+1])
		}
	}
	return nil
}

// single applies one rule command as its own batch.
func (rs *ruleset) single(tableName string, o op) error {
	if err := rs.counted(o.rule); err != nil {
		return err
	}
	next := rs.clone()
	t, err := next.table(tableName)
	if err != nil {
		return err
	}
	if err := t.apply(o); err != nil {
		return err
	}
	if err := t.validate(); err != nil {
		return err
	}
	rs.tables = next.tables
	return nil
}

// Exists, Insert and Delete make a ruleset a ruler, the single-rule
// interface the Proxier uses for its jump rules.

// Exists reports whether chain of table has exactly rulespec.
func (rs *ruleset) Exists(tableName, chainName string, rulespec ...string) (bool, error) {
	t, err := rs.table(tableName)
	if err != nil {
		return false, err
	}
	c, ok := t.chains[chainName]
	if !ok {
		return false, fmt.Errorf("chain %s does not exist in table %s", chainName, tableName)
	}
	return c.find(rulespec) >= 0, nil
}

// Insert inserts rulespec at 1-based pos.
func (rs *ruleset) Insert(tableName, chainName string, pos int, rulespec ...string) error {
	return rs.single(tableName, op{kind: opInsert, chain: chainName, pos: pos, rule: rulespec})
}

// Delete removes the first rule equal to rulespec.
func (rs *ruleset) Delete(tableName, chainName string, rulespec ...string) error {
	return rs.single(tableName, op{kind: opDelete, chain: chainName, rule: rulespec})
}

// proxydChains lists the PROXYD-* chains of a table, sorted.
func (rs *ruleset) proxydChains(tableName string) []string {
	t, ok := rs.tables[tableName]
	if !ok {
		return nil
	}
	var out []string
	for _, cn := range t.order {
		if strings.HasPrefix(cn, chainPrefix) {
			out = append(out, cn)
		}
	}
	slices.Sort(out)
	return out
}
