package nftables

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"

	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/pkg/model"
)

func tableFamily(f model.IPFamily) nft.TableFamily {
	if f == model.IPv6 {
		return nft.TableFamilyIPv6
	}
	return nft.TableFamilyIPv4
}

func table(f model.IPFamily) *nft.Table {
	return &nft.Table{Name: TableName, Family: tableFamily(f)}
}

var hooks = map[string]nft.ChainHook{
	"prerouting":  *nft.ChainHookPrerouting,
	"input":       *nft.ChainHookInput,
	"forward":     *nft.ChainHookForward,
	"output":      *nft.ChainHookOutput,
	"postrouting": *nft.ChainHookPostrouting,
}

func nftChain(t *nft.Table, c *Chain) *nft.Chain {
	ch := &nft.Chain{Name: c.Name, Table: t}
	if b := c.Base; b != nil {
		hook := hooks[b.Hook]
		prio := nft.ChainPriority(b.Priority)
		policy := nft.ChainPolicyAccept
		ch.Hooknum, ch.Priority, ch.Policy = &hook, &prio, &policy
		ch.Type = nft.ChainType(b.Type)
	}
	return ch
}

func nftSet(t *nft.Table, f model.IPFamily, s *Set) *nft.Set {
	set := &nft.Set{Table: t, Name: s.Name, KeyType: setKeyType(f, s.Fields), Concatenation: len(s.Fields) > 1}
	if s.Verdicts {
		set.IsMap, set.DataType = true, nft.TypeVerdict
	}
	if s.Timeout > 0 {
		set.Dynamic, set.HasTimeout, set.Timeout, set.Size = true, true, s.Timeout, affinitySetSize
	}
	return set
}

func nftElements(s *Set, elems []Element) []nft.SetElement {
	out := make([]nft.SetElement, len(elems))
	for i, e := range elems {
		out[i] = nft.SetElement{Key: elementBytes(s.Fields, e.Fields)}
		if s.Verdicts {
			out[i].VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: e.Goto}
		}
	}
	return out
}

// elementsPerMessage keeps each element message's nested element list
// under netlink's 64 KiB attribute length: a longer list overflows the
// 16-bit nla_len and the kernel misreads the batch (seen as ENOENT).
// Several messages in one batch are still one transaction.
const elementsPerMessage = 256

// queue adds the plan's operations to conn's pending batch; nothing reaches
// the kernel until conn.Flush, which commits them all or none. old is the
// table a full plan replaces, as listed just before (nil: none, or unknown).
func queue(conn *nft.Conn, p Plan, old *kernelTable) error {
	t := table(p.Family)
	for _, op := range p.Ops {
		switch op.Kind {
		case OpRecreateTable:
			if old.keepsBaseChains(p) {
				// Empty the table but keep its base chains, so their
				// hooks stay registered (see kernelTable).
				if err := queueInPlace(conn, t, p, old); err != nil {
					return err
				}
				continue
			}
			conn.AddTable(t)
			conn.DelTable(t)
			conn.AddTable(t)
		case OpAddSet:
			if err := conn.AddSet(nftSet(t, p.Family, op.Set), nil); err != nil {
				return fmt.Errorf("set %s: %w", op.Set.Name, err)
			}
		case OpAddChain:
			conn.AddChain(nftChain(t, op.Chain))
		case OpFlushChain:
			conn.FlushChain(nftChain(t, op.Chain))
		case OpDelChain:
			conn.DelChain(nftChain(t, op.Chain))
		case OpDelSet:
			conn.DelSet(nftSet(t, p.Family, op.Set))
		case OpAddRule:
			exprs, err := (&compiler{f: p.Family}).rule(op.Rule)
			if err != nil {
				return fmt.Errorf("rule in chain %s: %w", op.Chain.Name, err)
			}
			conn.AddRule(&nft.Rule{Table: t, Chain: nftChain(t, op.Chain), Exprs: exprs})
		case OpAddElements, OpDelElements:
			write := conn.SetAddElements
			if op.Kind == OpDelElements {
				write = conn.SetDeleteElements
			}
			set := nftSet(t, p.Family, op.Set)
			for chunk := range slices.Chunk(op.Elements, elementsPerMessage) {
				if err := write(set, nftElements(op.Set, chunk)); err != nil {
					return fmt.Errorf("elements of %s: %w", op.Set.Name, err)
				}
			}
		}
	}
	return nil
}

// kernelTable is what proxyd's table holds before a full rewrite. The
// rewrite empties it and writes everything again in one transaction, but
// keeps the base chains when they are already what the plan wants: deleting
// the table would unregister their hooks and register new ones, and for the
// nat hooks the kernel then runs the new chain before the old one at the same
// priority. A connection's first packet that evaluates the new chain before
// the commit (empty) and the old one after it (emptied) is NATed by neither,
// gets conntrack's null binding, and filter-forward rejects it as addressed
// to a ClusterIP ("connection refused"), about once in a thousand rewrites.
//
// It keeps the sets and the chains the plan writes, too, and rewrites only
// the elements that differ: a rule a packet runs from the old generation
// looks its verdict map up in the generation of the moment, so a map element
// deleted and added again in the commit's transaction is, for that packet,
// in neither, and the packet is not NATed either.
type kernelTable struct {
	chains []kernelChain
	sets   map[string][]nft.SetElement
}

type kernelChain struct {
	name string
	base bool
	hook nft.ChainHook
	prio nft.ChainPriority
	typ  nft.ChainType
}

// listTable lists the chains and sets of proxyd's table of family f; nil
// when there is no such table.
func listTable(conn *nft.Conn, f model.IPFamily) (*kernelTable, error) {
	exists, _, err := tableState(conn, f)
	if err != nil || !exists {
		return nil, err
	}
	chains, err := conn.ListChainsOfTableFamily(tableFamily(f))
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	sets, err := conn.GetSets(table(f))
	if err != nil {
		return nil, fmt.Errorf("list nftables sets: %w", err)
	}
	kt := &kernelTable{sets: map[string][]nft.SetElement{}}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != TableName {
			continue
		}
		kc := kernelChain{name: c.Name, typ: c.Type}
		if c.Hooknum != nil && c.Priority != nil {
			kc.base, kc.hook, kc.prio = true, *c.Hooknum, *c.Priority
		}
		kt.chains = append(kt.chains, kc)
	}
	for _, s := range sets {
		if s.HasTimeout || s.Dynamic {
			// Affinity sets: the rewrite keeps their entries, which
			// expire on their own, so there is nothing to read.
			kt.sets[s.Name] = nil
			continue
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of nftables set %s: %w", s.Name, err)
		}
		kt.sets[s.Name] = elems
	}
	return kt, nil
}

// queueInPlace empties old for p's full rewrite without deleting what p
// writes again: every rule goes (p adds them back), chains and sets p does
// not write are deleted, and of the sets p writes only the elements it does
// not write again are deleted (p's add of an element already there with the
// same verdict changes nothing). A set whose definition differs makes the
// kernel refuse p's add, and the caller recreates the table instead.
func queueInPlace(conn *nft.Conn, t *nft.Table, p Plan, old *kernelTable) error {
	wantChain := map[string]bool{}
	wantSet := map[string]*Set{}
	wantElems := map[string]map[string]string{} // set: key: goto
	for _, op := range p.Ops {
		switch op.Kind {
		case OpAddChain:
			wantChain[op.Chain.Name] = true
		case OpAddSet:
			wantSet[op.Set.Name] = op.Set
		case OpAddElements:
			m := wantElems[op.Set.Name]
			if m == nil {
				m = map[string]string{}
				wantElems[op.Set.Name] = m
			}
			for _, e := range nftElements(op.Set, op.Elements) {
				m[string(e.Key)] = gotoOf(e)
			}
		}
	}
	conn.AddTable(t)
	conn.FlushTable(t)
	for name, elems := range old.sets {
		s, ok := wantSet[name]
		if !ok {
			conn.DelSet(&nft.Set{Table: t, Name: name})
			continue
		}
		if s.Timeout > 0 {
			continue // affinity entries expire on their own
		}
		var stale []nft.SetElement
		for _, e := range elems {
			if g, ok := wantElems[name][string(e.Key)]; !ok || g != gotoOf(e) {
				stale = append(stale, nft.SetElement{Key: e.Key})
			}
		}
		set := nftSet(t, p.Family, s)
		for chunk := range slices.Chunk(stale, elementsPerMessage) {
			if err := conn.SetDeleteElements(set, chunk); err != nil {
				return fmt.Errorf("elements of %s: %w", name, err)
			}
		}
	}
	for _, c := range old.chains {
		if !wantChain[c.name] {
			conn.DelChain(&nft.Chain{Table: t, Name: c.name})
		}
	}
	return nil
}

func gotoOf(e nft.SetElement) string {
	if e.VerdictData == nil {
		return ""
	}
	return e.VerdictData.Chain
}

// keepsBaseChains reports whether a full rewrite of p can keep every base
// chain of the table as it is: each is one p wants, with the same hook,
// priority and type. Otherwise the table is deleted and created again.
func (kt *kernelTable) keepsBaseChains(p Plan) bool {
	if kt == nil {
		return false
	}
	want := map[string]*BaseChain{}
	for _, op := range p.Ops {
		if op.Kind == OpAddChain && op.Chain.Base != nil {
			want[op.Chain.Name] = op.Chain.Base
		}
	}
	for _, c := range kt.chains {
		if !c.base {
			continue
		}
		b, ok := want[c.name]
		if !ok || hooks[b.Hook] != c.hook || nft.ChainPriority(b.Priority) != c.prio || nft.ChainType(b.Type) != c.typ {
			return false
		}
	}
	return true
}

// tableState is what the kernel says about proxyd's table, cheaply (one
// table dump, not a listing of its chains): whether it exists and its use
// count, the number of chains and sets in it.
func tableState(conn *nft.Conn, f model.IPFamily) (exists bool, use uint32, err error) {
	tables, err := conn.ListTablesOfFamily(tableFamily(f))
	if err != nil {
		return false, 0, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, t.Use, nil
		}
	}
	return false, 0, nil
}

// useMatches compares the kernel's use count with ours. google/nftables
// v0.3.0 decodes the attribute in the wrong byte order; accept either
// reading so a fixed library keeps working.
func useMatches(use uint32, want int) bool {
	return int(use) == want || int(bits.ReverseBytes32(use)) == want
}

// deleteTable removes proxyd's table of family f if it exists.
func deleteTable(conn *nft.Conn, f model.IPFamily) error {
	exists, _, err := tableState(conn, f)
	if err != nil || !exists {
		return err
	}
	conn.DelTable(table(f))
	if err := conn.Flush(); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete table %s %s: %w", familyWord(f), TableName, err)
	}
	return nil
}

func isNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT)
}
