package iptables

import (
	"fmt"
)

// ruler is the single-rule interface proxyd needs to remove its jumps
// from the built-in chains it shares with everyone else (a full write
// inserts them in its restore). *github.com/coreos/go-iptables/iptables.IPTables
// implements it, and so does the in-memory ruleset.
type ruler interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	Delete(table, chain string, rulespec ...string) error
}

// jumpRule is one rule proxyd inserts into a built-in chain.
type jumpRule struct {
	table, chain string
	spec         []string
}

// target is the proxyd chain the rule jumps to.
func (j jumpRule) target() string {
	t, _ := ruleTarget(j.spec)
	return t
}

const (
	servicesComment    = "proxyd service portals"
	postroutingComment = "proxyd postrouting rules"
	externalComment    = "proxyd externally-visible service portals"
	forwardComment     = "proxyd forwarding rules"
)

// jumpRules are the only rules proxyd writes outside its own chains. In
// filter only new connections are checked (the REJECTs are for the first
// packet to a Service that has no endpoints), except by PROXYD-FORWARD:
// inserted last, it is the first of FORWARD, as kube-proxy's KUBE-FORWARD.
var jumpRules = []jumpRule{
	{tableNAT, "PREROUTING", []string{"-m", "comment", "--comment", servicesComment, "-j", ChainServices}},
	{tableNAT, "OUTPUT", []string{"-m", "comment", "--comment", servicesComment, "-j", ChainServices}},
	{tableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", postroutingComment, "-j", ChainPostrouting}},
	{tableFilter, "INPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", servicesComment, "-j", ChainServices}},
	{tableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", servicesComment, "-j", ChainServices}},
	{tableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", servicesComment, "-j", ChainServices}},
	{tableFilter, "INPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", externalComment, "-j", ChainExternalServices}},
	{tableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", externalComment, "-j", ChainExternalServices}},
	{tableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", externalComment, "-j", ChainExternalServices}},
	{tableFilter, "FORWARD", []string{"-m", "comment", "--comment", forwardComment, "-j", ChainForward}},
}

// insertJumps puts each jump rule whose target chain exists at the top of
// its built-in chain in rs unless it is there already, as a full write
// leaves the kernel's tables.
func insertJumps(rs *ruleset) error {
	for _, j := range jumpRules {
		if t, ok := rs.tables[j.table]; !ok || t.chains[j.target()] == nil {
			continue
		}
		if ok, _ := rs.Exists(j.table, j.chain, j.spec...); ok {
			continue
		}
		if err := rs.Insert(j.table, j.chain, 1, j.spec...); err != nil {
			return fmt.Errorf("insert jump from %s %s to %s: %w", j.table, j.chain, j.target(), err)
		}
	}
	return nil
}

// maxDuplicateJumps bounds how many copies of one jump rule deleteJumps
// removes (copies appear when two proxies raced to insert it).
const maxDuplicateJumps = 16

// deleteJumps removes proxyd's jump rules whose target chain exists (has
// says which do: with the target gone, no jump to it can exist, and asking
// iptables about one fails with "couldn't load target").
func deleteJumps(r ruler, has func(table, chain string) bool) error {
	for _, j := range jumpRules {
		if !has(j.table, j.target()) {
			continue
		}
		for range maxDuplicateJumps {
			ok, err := r.Exists(j.table, j.chain, j.spec...)
			if err != nil {
				return fmt.Errorf("check jump from %s %s to %s: %w", j.table, j.chain, j.target(), err)
			}
			if !ok {
				break
			}
			if err := r.Delete(j.table, j.chain, j.spec...); err != nil {
				return fmt.Errorf("delete jump from %s %s to %s: %w", j.table, j.chain, j.target(), err)
			}
		}
	}
	return nil
}
