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
// the kernel until conn.Flush, which commits them all or none.
func queue(conn *nft.Conn, p Plan) error {
	t := table(p.Family)
	for _, op := range p.Ops {
		switch op.Kind {
		case OpRecreateTable:
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
