package nftables

import (
	"errors"
	"fmt"
	"slices"

	gnft "github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
)

func tableFamily(f model.IPFamily) gnft.TableFamily { return gnft.TableFamily(nftFamily(f)) }

func table(f model.IPFamily) *gnft.Table { return nft.GTable(nftFamily(f), TableName) }

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
			if err := nft.AddSet(conn, t, op.Set); err != nil {
				return err
			}
		case OpAddChain:
			conn.AddChain(nft.GChain(t, op.Chain))
		case OpFlushChain:
			conn.FlushChain(nft.GChain(t, op.Chain))
		case OpDelChain:
			conn.DelChain(nft.GChain(t, op.Chain))
		case OpDelSet:
			conn.DelSet(&gnft.Set{Table: t, Name: op.Set.Name})
		case OpAddRule:
			if err := nft.AddRule(conn, t, op.Chain, op.Rule); err != nil {
				return err
			}
		case OpAddElements:
			if err := nft.AddElements(conn, t, op.Set, op.Elements); err != nil {
				return err
			}
		case OpDelElements:
			if err := nft.DelElements(conn, t, op.Set, op.Elements); err != nil {
				return err
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
	sets   map[string][]gnft.SetElement
}

type kernelChain struct {
	name string
	base bool
	hook gnft.ChainHook
	prio gnft.ChainPriority
	typ  gnft.ChainType
}

// listTable lists the chains and sets of proxyd's table of family f; nil
// when there is no such table.
func listTable(conn *nft.Conn, f model.IPFamily) (*kernelTable, error) {
	exists, err := tableExists(conn, f)
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
	kt := &kernelTable{sets: map[string][]gnft.SetElement{}}
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
func queueInPlace(conn *nft.Conn, t *gnft.Table, p Plan, old *kernelTable) error {
	wantChain := map[string]bool{}
	wantSet := map[string]*nft.Set{}
	wantElems := map[string]map[string]string{} // set: element: what it maps to
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
			enc, err := nft.GElements(op.Set, op.Elements)
			if err != nil {
				return err
			}
			for _, e := range enc {
				m[elementKey(e)] = elementData(e)
			}
		}
	}
	conn.AddTable(t)
	conn.FlushTable(t)
	for name, elems := range old.sets {
		s, ok := wantSet[name]
		if !ok {
			conn.DelSet(&gnft.Set{Table: t, Name: name})
			continue
		}
		if s.Timeout > 0 {
			continue // affinity entries expire on their own
		}
		var stale []gnft.SetElement
		for _, e := range elems {
			if d, ok := wantElems[name][elementKey(e)]; !ok || d != elementData(e) {
				stale = append(stale, gnft.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, IntervalEnd: e.IntervalEnd})
			}
		}
		set, err := nft.GSet(t, s)
		if err != nil {
			return err
		}
		if s.Interval {
			nft.SortIntervalElements(stale)
		}
		for chunk := range slices.Chunk(stale, nft.ElementsPerMessage) {
			if err := conn.SetDeleteElements(set, chunk); err != nil {
				return fmt.Errorf("elements of %s: %w", name, err)
			}
		}
	}
	for _, c := range old.chains {
		if !wantChain[c.name] {
			conn.DelChain(&gnft.Chain{Table: t, Name: c.name})
		}
	}
	return nil
}

// elementKey identifies an element as the kernel does: its key (and an
// interval's end, or its being one).
func elementKey(e gnft.SetElement) string {
	return fmt.Sprintf("%x/%x/%v", e.Key, e.KeyEnd, e.IntervalEnd)
}

// elementData is what an element maps to: a verdict's chain, or data.
func elementData(e gnft.SetElement) string {
	if e.VerdictData != nil {
		return e.VerdictData.Chain
	}
	return string(e.Val)
}

// keepsBaseChains reports whether a full rewrite of p can keep every base
// chain of the table as it is: each is one p wants, with the same hook,
// priority and type. Otherwise the table is deleted and created again.
func (kt *kernelTable) keepsBaseChains(p Plan) bool {
	if kt == nil {
		return false
	}
	want := map[string]*nft.Base{}
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
		if !ok || gnft.ChainHook(b.Hook) != c.hook || gnft.ChainPriority(b.Priority) != c.prio || gnft.ChainType(b.Type) != c.typ {
			return false
		}
	}
	return true
}

// tableExists reports whether proxyd's table of family f exists (one
// table dump, not a listing of its chains).
func tableExists(conn *nft.Conn, f model.IPFamily) (bool, error) {
	tables, err := conn.ListTablesOfFamily(tableFamily(f))
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

// deleteTable removes proxyd's table of family f if it exists.
func deleteTable(conn *nft.Conn, f model.IPFamily) error {
	exists, err := tableExists(conn, f)
	if err != nil || !exists {
		return err
	}
	conn.DelTable(table(f))
	if err := conn.Flush(); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete table %s %s: %w", nftFamily(f), TableName, err)
	}
	return nil
}

func isNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT)
}
