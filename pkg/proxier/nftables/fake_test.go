package nftables

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
)

// fakeTable applies plans the way the kernel applies a transaction: all
// or nothing, with the kernel's reference checks (a goto to a missing
// chain, deleting a referenced or non-empty chain, deleting a missing
// element, re-adding an element with other data), so tests assert the
// resulting table, not the calls.
type fakeTable struct {
	chains map[string][]string               // chain → rule texts
	sets   map[string]map[string]string      // set → element key → element
	ranges map[string]map[string]nft.Element // interval set → key → element
}

func newFakeTable() *fakeTable {
	return &fakeTable{chains: map[string][]string{}, sets: map[string]map[string]string{}, ranges: map[string]map[string]nft.Element{}}
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{chains: maps.Clone(t.chains), sets: map[string]map[string]string{}, ranges: map[string]map[string]nft.Element{}}
	for k, v := range t.sets {
		c.sets[k] = maps.Clone(v)
	}
	for k, v := range t.ranges {
		c.ranges[k] = maps.Clone(v)
	}
	return c
}

func (t *fakeTable) apply(p Plan) error {
	next := t.clone()
	for i, op := range p.Ops {
		if err := next.op(p, op); err != nil {
			return fmt.Errorf("op %d (%v): %w", i, op.Kind, err)
		}
	}
	*t = *next
	return nil
}

func (t *fakeTable) op(p Plan, op Op) error {
	switch op.Kind {
	case OpRecreateTable:
		*t = *newFakeTable()
	case OpAddSet:
		if _, ok := t.sets[op.Set.Name]; !ok {
			t.sets[op.Set.Name] = map[string]string{}
			t.ranges[op.Set.Name] = map[string]nft.Element{}
		}
	case OpDelSet:
		if _, ok := t.sets[op.Set.Name]; !ok {
			return syscall.ENOENT
		}
		for _, rules := range t.chains {
			for _, r := range rules {
				if strings.Contains(r, "@"+op.Set.Name+" ") {
					return fmt.Errorf("set %s in use: %w", op.Set.Name, syscall.EBUSY)
				}
			}
		}
		delete(t.sets, op.Set.Name)
		delete(t.ranges, op.Set.Name)
	case OpAddChain:
		if _, ok := t.chains[op.Chain.Name]; !ok {
			t.chains[op.Chain.Name] = nil
		}
	case OpFlushChain:
		if _, ok := t.chains[op.Chain.Name]; !ok {
			return syscall.ENOENT
		}
		t.chains[op.Chain.Name] = nil
	case OpDelChain:
		rules, ok := t.chains[op.Chain.Name]
		if !ok {
			return syscall.ENOENT
		}
		if len(rules) > 0 || t.referenced(op.Chain.Name) {
			return syscall.EBUSY
		}
		delete(t.chains, op.Chain.Name)
	case OpAddRule:
		if _, ok := t.chains[op.Chain.Name]; !ok {
			return syscall.ENOENT
		}
		for _, st := range op.Rule {
			var set string
			switch st := st.(type) {
			case nft.Lookup:
				set = st.Set
			case nft.Vmap:
				set = st.Map
			case nft.Update:
				set = st.Set
			}
			if _, ok := t.sets[set]; set != "" && !ok {
				return fmt.Errorf("rule uses missing set %s: %w", set, syscall.ENOENT)
			}
		}
		t.chains[op.Chain.Name] = append(t.chains[op.Chain.Name], op.Rule.Text(nftFamily(p.Family)))
	case OpAddElements, OpDelElements:
		set, ok := t.sets[op.Set.Name]
		if !ok {
			return syscall.ENOENT
		}
		for _, e := range op.Elements {
			key := e.KeyText(op.Set)
			old, exists := set[key]
			switch {
			case op.Kind == OpDelElements && !exists:
				return fmt.Errorf("element %s: %w", key, syscall.ENOENT)
			case op.Kind == OpDelElements:
				delete(set, key)
			case exists && old != e.Text(op.Set):
				return fmt.Errorf("element %s: %w", key, syscall.EBUSY)
			default:
				if _, ok := t.chains[e.Verdict.Chain]; e.Verdict.Chain != "" && !ok {
					return fmt.Errorf("goto %s: %w", e.Verdict.Chain, syscall.ENOENT)
				}
				if op.Set.Interval {
					for k, o := range t.ranges[op.Set.Name] {
						if k != key && o.Key[0].Num() <= e.Key[0].NumEnd() && e.Key[0].Num() <= o.Key[0].NumEnd() {
							return fmt.Errorf("interval %s overlaps %s: %w", key, k, syscall.EEXIST)
						}
					}
				}
				set[key] = e.Text(op.Set)
				if op.Set.Interval {
					t.ranges[op.Set.Name][key] = e
				}
			}
			if op.Kind == OpDelElements {
				delete(t.ranges[op.Set.Name], key)
			}
		}
	default:
		return errors.New("unknown op")
	}
	return nil
}

func (t *fakeTable) referenced(chain string) bool {
	for _, rules := range t.chains {
		for _, r := range rules {
			if strings.HasSuffix(r, "goto "+chain) || strings.HasSuffix(r, "jump "+chain) {
				return true
			}
		}
	}
	for _, set := range t.sets {
		for _, e := range set {
			if strings.HasSuffix(e, " : goto "+chain) || strings.HasSuffix(e, " : jump "+chain) {
				return true
			}
		}
	}
	return false
}

// String is a canonical listing: chains and elements sorted.
func (t *fakeTable) String() string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(t.sets)) {
		fmt.Fprintf(&b, "set %s\n", name)
		for _, k := range slices.Sorted(maps.Keys(t.sets[name])) {
			fmt.Fprintf(&b, "\t%s\n", t.sets[name][k])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(t.chains)) {
		fmt.Fprintf(&b, "chain %s\n", name)
		for _, r := range t.chains[name] {
			fmt.Fprintf(&b, "\t%s\n", r)
		}
	}
	return b.String()
}

// tableOf is the fake table holding exactly r.
func tableOf(r *nft.Table) *fakeTable {
	t := newFakeTable()
	f := model.IPv4
	if r.Family == nft.IP6 {
		f = model.IPv6
	}
	if err := t.apply(FullPlan(f, r)); err != nil {
		panic(err)
	}
	return t
}
