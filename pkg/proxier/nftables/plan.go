package nftables

import (
	"fmt"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
)

// Plan is one transaction: the operations that turn the kernel's table from
// what proxyd last wrote into the desired table. Plans are pure values;
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
	OpDelSet
)

// Op is one operation of a plan.
type Op struct {
	Kind     OpKind
	Chain    *nft.Chain
	Rule     nft.Rule
	Set      *nft.Set
	Elements []nft.Element
}

// Empty reports whether the plan writes nothing.
func (p Plan) Empty() bool { return len(p.Ops) == 0 }

// FullPlan writes desired from scratch in one transaction.
func FullPlan(f model.IPFamily, desired *nft.Table) Plan {
	p := Plan{Family: f, Full: true, Ops: []Op{{Kind: OpRecreateTable}}}
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

// sameRules compares two chains' rules by their text: a field added to a
// statement cannot be forgotten here.
func sameRules(a, b *nft.Chain, f model.IPFamily) bool {
	if len(a.Rules) != len(b.Rules) {
		return false
	}
	for i := range a.Rules {
		if a.Rules[i].Text(nftFamily(f)) != b.Rules[i].Text(nftFamily(f)) {
			return false
		}
	}
	return true
}

// elementID is an element as nft prints it: key and verdict.
func elementID(s *nft.Set, e nft.Element) string { return e.Text(s) }

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
		case OpDelSet:
			fmt.Fprintf(&b, "delete set %s\n", op.Set.Name)
		case OpAddRule:
			fmt.Fprintf(&b, "add rule %s %s\n", op.Chain.Name, op.Rule.Text(nftFamily(p.Family)))
		case OpAddElements, OpDelElements:
			verb := "add"
			if op.Kind == OpDelElements {
				verb = "delete"
			}
			for _, e := range op.Elements {
				fmt.Fprintf(&b, "%s element %s { %s }\n", verb, op.Set.Name, e.Text(op.Set))
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
