package ipvs

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"

	"github.com/google/nftables"
)

// Firewall writes the netfilter side of the backend.
type Firewall interface {
	// Apply replaces the proxyd-ipvs table with r, all or nothing.
	Apply(r *Ruleset) error
	// Delete removes the table; a missing table (or no nf_tables at all)
	// is not an error.
	Delete() error
	// NodeServers reads back the NodeServers of the table in place; a
	// missing table has none.
	NodeServers() ([]Tuple, error)
}

// nftFirewall is the Firewall on the kernel's nf_tables, via netlink.
type nftFirewall struct {
	netnsPath string
}

func (n *nftFirewall) conn() (*nftables.Conn, func(), error) {
	if n.netnsPath == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	f, err := os.Open(n.netnsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("open netns %s: %w", n.netnsPath, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return c, func() { f.Close() }, nil
}

var nftTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

// Apply writes the whole table in one netlink batch: add (so that the
// delete cannot fail), delete, then create everything anew. The kernel
// commits the batch atomically, so packets see the old table or the new.
func (n *nftFirewall) Apply(r *Ruleset) error {
	c, done, err := n.conn()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer done()
	c.AddTable(nftTable)
	c.DelTable(nftTable)
	t := c.AddTable(nftTable)
	for _, s := range r.sets() {
		set := &nftables.Set{Table: t, Name: s.name, KeyType: s.keyType, Concatenation: len(nftables.ConcatSetTypeElements(s.keyType)) > 1, Interval: s.interval}
		elems := make([]nftables.SetElement, 0, len(s.elements))
		for _, e := range s.elements {
			elems = append(elems, nftables.SetElement{Key: e.key, KeyEnd: e.keyEnd})
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("nftables: set %s: %w", s.name, err)
		}
	}
	byName := map[string]*nftables.Chain{}
	for _, cs := range chains {
		ch := &nftables.Chain{Name: cs.name, Table: t}
		if cs.hook != "" {
			accept := nftables.ChainPolicyAccept
			ch.Type, ch.Hooknum, ch.Priority, ch.Policy = nftables.ChainType(cs.kind), cs.hooknum, cs.priority, &accept
		}
		byName[cs.name] = c.AddChain(ch)
	}
	for _, rl := range r.rules() {
		c.AddRule(&nftables.Rule{Table: t, Chain: byName[rl.chain], Exprs: rl.exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: write table inet %s: %w", TableName, err)
	}
	return nil
}

// Delete removes the table if it exists.
func (n *nftFirewall) Delete() error {
	c, done, err := n.conn()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer done()
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if notPresent(err) {
			return nil
		}
		return fmt.Errorf("nftables: look up table inet %s: %w", TableName, err)
	}
	c.DelTable(nftTable)
	if err := c.Flush(); err != nil && !notPresent(err) {
		return fmt.Errorf("nftables: delete table inet %s: %w", TableName, err)
	}
	return nil
}

// NodeServers reads the node-servers sets of the table in place.
func (n *nftFirewall) NodeServers() ([]Tuple, error) {
	c, done, err := n.conn()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer done()
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if notPresent(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("nftables: look up table inet %s: %w", TableName, err)
	}
	var out []Tuple
	for _, f := range families {
		name := nodeServersSet + "-" + f.suffix
		set, err := c.GetSetByName(nftTable, name)
		if err != nil {
			if notPresent(err) {
				continue
			}
			return nil, fmt.Errorf("nftables: set %s: %w", name, err)
		}
		elems, err := c.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("nftables: elements of set %s: %w", name, err)
		}
		for _, e := range elems {
			if t, ok := f.parseTuple(e.Key); ok {
				out = append(out, t)
			}
		}
	}
	return out, nil
}

// notPresent covers a missing table and a kernel without nf_tables.
func notPresent(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, os.ErrNotExist)
}

// FakeFirewall keeps the last applied Ruleset, as the kernel would keep
// the table. It is safe for concurrent use.
type FakeFirewall struct {
	mu      sync.Mutex
	current *Ruleset
	// Applies counts successful Apply calls.
	Applies int
	// Err, when set, makes the next Apply fail without changing anything.
	Err error
}

// Apply stores r, or fails with Err.
func (f *FakeFirewall) Apply(r *Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		err := f.Err
		f.Err = nil
		return err
	}
	c := *r
	f.current = &c
	f.Applies++
	return nil
}

// Delete forgets the table.
func (f *FakeFirewall) Delete() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current = nil
	return nil
}

// NodeServers returns the NodeServers of the table in place.
func (f *FakeFirewall) NodeServers() ([]Tuple, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current == nil {
		return nil, nil
	}
	return slices.Clone(f.current.NodeServers), nil
}

// Current returns the table in place, nil if none.
func (f *FakeFirewall) Current() *Ruleset {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current
}
