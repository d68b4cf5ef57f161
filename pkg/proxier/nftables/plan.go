package nftables

import (
	"fmt"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
)

// Plan is one transaction: the operations that turn the kernel's table from
// what proxyd last wrote into the desired Ruleset. Plans are pure values;
// String prints them for logs and golden tests.
type Plan struct {
	Family model.IPFamily
	Full   bool
	Ops    []Op
}

// OpKind is the kind of one operation.
type OpKind int

// The operations a plan is made of, in the order a transaction needs them.
const (
	OpRecreateTable OpKind = iota // add table, delete it and add it again: a clean slate
	OpAddSet
	OpAddChain
	OpFlushChain
	OpAddRule
	OpDelElements
	OpAddElements
	OpDelChain
)

// Op is one operation of a plan.
type Op struct {
	Kind     OpKind
	Chain    *Chain
	Rule     Rule
	Set      *Set
	Elements []Element
}

// Empty reports whether the plan writes nothing.
func (p Plan) Empty() bool { return len(p.Ops) == 0 }

// FullPlan writes desired from scratch in one transaction.
func FullPlan(desired *Ruleset) Plan {
	p := Plan{Family: desired.Family, Full: true, Ops: []Op{{Kind: OpRecreateTable}}}
	for _, s := range desired.Sets {
		p.Ops = append(p.Ops, Op{Kind: OpAddSet, Set: s})
	}
	for _, c := range desired.Chains {
		p.Ops = append(p.Ops, Op{Kind: OpAddChain, Chain: c})
	}
	for _, c := range desired.Chains {
		for _, r := range c.Rules {
			p.Ops = append(p.Ops, Op{Kind: OpAddRule, Chain: c, Rule: r})
		}
	}
	for _, s := range desired.Sets {
		if len(s.Elements) > 0 {
			p.Ops = append(p.Ops, Op{Kind: OpAddElements, Set: s, Elements: s.Elements})
		}
	}
	return p
}

// IncrementalPlan writes only what differs between written (what the
// kernel holds, as proxyd last wrote it) and desired. Sets and base chains
// are fixed by Render, so only elements and service chains come and go.
func IncrementalPlan(written, desired *Ruleset) Plan {
	p := Plan{Family: desired.Family}
	var newChains, changed, gone []*Chain
	old := map[string]*Chain{}
	for _, c := range written.Chains {
		old[c.Name] = c
	}
	for _, c := range desired.Chains {
		o, ok := old[c.Name]
		switch {
		case !ok:
			newChains = append(newChains, c)
		case !sameRules(o, c, desired):
			changed = append(changed, c)
		}
		delete(old, c.Name)
	}
	for _, c := range written.Chains {
		if _, ok := old[c.Name]; ok {
			gone = append(gone, c)
		}
	}
	for _, c := range newChains {
		p.Ops = append(p.Ops, Op{Kind: OpAddChain, Chain: c})
		for _, r := range c.Rules {
			p.Ops = append(p.Ops, Op{Kind: OpAddRule, Chain: c, Rule: r})
		}
	}
	for _, c := range changed {
		p.Ops = append(p.Ops, Op{Kind: OpFlushChain, Chain: c})
		for _, r := range c.Rules {
			p.Ops = append(p.Ops, Op{Kind: OpAddRule, Chain: c, Rule: r})
		}
	}
	var adds []Op
	for _, s := range desired.Sets {
		del, add := diffElements(written.Set(s.Name), s)
		if len(del) > 0 {
			p.Ops = append(p.Ops, Op{Kind: OpDelElements, Set: s, Elements: del})
		}
		if len(add) > 0 {
			adds = append(adds, Op{Kind: OpAddElements, Set: s, Elements: add})
		}
	}
	p.Ops = append(p.Ops, adds...)
	for _, c := range gone {
		p.Ops = append(p.Ops, Op{Kind: OpFlushChain, Chain: c}, Op{Kind: OpDelChain, Chain: c})
	}
	return p
}

func sameRules(a, b *Chain, r *Ruleset) bool {
	if len(a.Rules) != len(b.Rules) {
		return false
	}
	for i := range a.Rules {
		if a.Rules[i].text(r.Family) != b.Rules[i].text(r.Family) {
			return false
		}
	}
	return true
}

func elementID(types []FieldType, e Element) string { return e.Key(types) + " : " + e.Goto }

// diffElements returns the elements of old missing from new (to delete) and
// of new missing from old (to add); a changed verdict is a delete and an add.
func diffElements(old, new *Set) (del, add []Element) {
	have := map[string]bool{}
	if old != nil {
		for _, e := range old.Elements {
			have[elementID(old.Fields, e)] = true
		}
	}
	want := map[string]bool{}
	for _, e := range new.Elements {
		id := elementID(new.Fields, e)
		want[id] = true
		if !have[id] {
			add = append(add, e)
		}
	}
	if old != nil {
		for _, e := range old.Elements {
			if !want[elementID(old.Fields, e)] {
				del = append(del, e)
			}
		}
	}
	return del, add
}

// String prints the plan one operation a line, nft-style.
func (p Plan) String() string {
	var b strings.Builder
	for _, op := range p.Ops {
		switch op.Kind {
		case OpRecreateTable:
			b.WriteString("recreate table\n")
		case OpAddSet:
			fmt.Fprintf(&b, "add set %s\n", op.Set.Name)
		case OpAddChain:
			fmt.Fprintf(&b, "add chain %s\n", op.Chain.Name)
		case OpFlushChain:
			fmt.Fprintf(&b, "flush chain %s\n", op.Chain.Name)
		case OpDelChain:
			fmt.Fprintf(&b, "delete chain %s\n", op.Chain.Name)
		case OpAddRule:
			fmt.Fprintf(&b, "add rule %s %s\n", op.Chain.Name, op.Rule.text(p.Family))
		case OpAddElements, OpDelElements:
			verb := "add"
			if op.Kind == OpDelElements {
				verb = "delete"
			}
			for _, e := range op.Elements {
				elem := e.Key(op.Set.Fields)
				if op.Set.Verdicts {
					elem += " : goto " + e.Goto
				}
				fmt.Fprintf(&b, "%s element %s { %s }\n", verb, op.Set.Name, elem)
			}
		}
	}
	return b.String()
}

// Size is the number of kernel objects the plan writes (rules, chains and
// elements), the unit of the kernel-writes metric.
func (p Plan) Size() int {
	n := 0
	for _, op := range p.Ops {
		if op.Kind == OpAddElements || op.Kind == OpDelElements {
			n += len(op.Elements)
		} else {
			n++
		}
	}
	return n
}
