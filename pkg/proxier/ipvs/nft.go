package ipvs

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"

	gnft "github.com/google/nftables"

	"github.com/proxyd/proxyd/pkg/nft"
)

// Firewall writes the netfilter side of the backend.
type Firewall interface {
	// Apply replaces the proxyd-ipvs table with r, all or nothing.
	Apply(r *Ruleset) error
	// Delete removes the table; a missing table (or no nf_tables at all)
	// is not an error.
	Delete() error
	// Read returns the table in place (nil if none), as the kernel holds
	// it: what explain and drift checks trace.
	Read() (*nft.Table, error)
	// NodeServers reads back the NodeServers of the table in place; a
	// missing table has none.
	NodeServers() ([]Tuple, error)
	// Generation is the ruleset generation, which every commit to
	// nftables in the network namespace (anyone's, to any table) moves on
	// by one.
	Generation() (uint32, error)
}

// nftFirewall is the Firewall on the kernel's nf_tables, via netlink.
type nftFirewall struct {
	netnsPath string
}

// withNetns runs fn with an open descriptor of the firewall's network
// namespace (0: the caller's).
func (n *nftFirewall) withNetns(fn func(fd int) error) error {
	if n.netnsPath == "" {
		return fn(0)
	}
	f, err := os.Open(n.netnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.netnsPath, err)
	}
	defer f.Close()
	return fn(int(f.Fd()))
}

// conn opens a connection in the namespace open at fd.
func conn(fd int) (*nft.Conn, error) {
	c, err := nft.Dial(fd, nft.LargeBuffers)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// Apply writes the whole table in one netlink batch: add (so that the
// delete cannot fail), delete, then create everything anew. The kernel
// commits the batch atomically, so packets see the old table or the new.
func (n *nftFirewall) Apply(r *Ruleset) error {
	return n.withNetns(func(fd int) error {
		c, err := conn(fd)
		if err != nil {
			return err
		}
		defer c.Close()
		t := nft.GTable(nft.INet, TableName)
		c.AddTable(t)
		c.DelTable(t)
		if err := nft.Queue(c, r.Table()); err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: write table inet %s: %w", TableName, err)
		}
		return nil
	})
}

// Delete removes the table if it exists.
func (n *nftFirewall) Delete() error {
	return n.withNetns(func(fd int) error {
		c, err := conn(fd)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.ListTableOfFamily(TableName, gnft.TableFamilyINet); err != nil {
			if notPresent(err) {
				return nil
			}
			return fmt.Errorf("nftables: look up table inet %s: %w", TableName, err)
		}
		c.DelTable(nft.GTable(nft.INet, TableName))
		if err := c.Flush(); err != nil && !notPresent(err) {
			return fmt.Errorf("nftables: delete table inet %s: %w", TableName, err)
		}
		return nil
	})
}

// Read reads the table back over netlink.
func (n *nftFirewall) Read() (*nft.Table, error) {
	var t *nft.Table
	err := n.withNetns(func(fd int) error {
		r, err := nft.NewReader(fd)
		if err != nil {
			return err
		}
		defer r.Close()
		t, err = r.Table(nft.INet, TableName)
		return err
	})
	if err != nil && notPresent(err) {
		return nil, nil
	}
	return t, err
}

// NodeServers reads the node-servers sets of the table in place.
func (n *nftFirewall) NodeServers() ([]Tuple, error) {
	t, err := n.Read()
	if err != nil || t == nil {
		return nil, err
	}
	return nodeServers(t), nil
}

// Generation reads the ruleset generation.
func (n *nftFirewall) Generation() (uint32, error) {
	var gen uint32
	err := n.withNetns(func(fd int) error {
		r, err := nft.NewReader(fd)
		if err != nil {
			return err
		}
		defer r.Close()
		gen, err = r.Generation()
		return err
	})
	return gen, err
}

// notPresent covers a missing table and a kernel without nf_tables.
func notPresent(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, os.ErrNotExist)
}

// FakeFirewall keeps the last applied Ruleset, as the kernel would keep
// the table, and counts commits like the ruleset generation. Commit stands
// for another writer. It is safe for concurrent use.
type FakeFirewall struct {
	mu      sync.Mutex
	current *Ruleset
	// foreign, when set, is the table another writer left in place of
	// current.
	foreign *nft.Table
	gen     uint32
	// Refuse, when set, is the kernel's verdict on a table: an error
	// refuses the Apply, which then changes nothing.
	Refuse func(*Ruleset) error
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
	if f.Refuse != nil {
		if err := f.Refuse(r); err != nil {
			return err
		}
	}
	c := *r
	f.current, f.foreign = &c, nil
	f.Applies++
	f.gen++
	return nil
}

// Delete forgets the table.
func (f *FakeFirewall) Delete() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current != nil || f.foreign != nil {
		f.gen++
	}
	f.current, f.foreign = nil, nil
	return nil
}

// Commit is another writer's commit: t (nil: no table) takes the place of
// the table, and the generation moves on.
func (f *FakeFirewall) Commit(t *nft.Table) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current, f.foreign = nil, t
	f.gen++
}

// Generation counts the commits so far.
func (f *FakeFirewall) Generation() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, nil
}

// Read returns the table in place, nil if none.
func (f *FakeFirewall) Read() (*nft.Table, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.foreign != nil {
		return f.foreign, nil
	}
	if f.current == nil {
		return nil, nil
	}
	return f.current.Table(), nil
}

// NodeServers returns the NodeServers of the table in place.
func (f *FakeFirewall) NodeServers() ([]Tuple, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.foreign != nil:
		return nodeServers(f.foreign), nil
	case f.current == nil:
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
