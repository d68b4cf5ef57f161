package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// LinkName is the dummy interface that holds every ClusterIP proxyd serves
// (kube-proxy's kube-ipvs0).
const LinkName = "proxyd-ipvs0"

// Links manages the dummy interface and its addresses.
type Links interface {
	// EnsureLink creates the dummy interface if it is missing.
	EnsureLink(name string) error
	// Addrs lists the interface's addresses, without IPv6 link-local
	// ones; a missing interface has none.
	Addrs(name string) ([]netip.Addr, error)
	// AddAddr binds a as a /32 or /128; binding it twice is not an error.
	AddAddr(name string, a netip.Addr) error
	// DelAddr unbinds a; a missing address is not an error.
	DelAddr(name string, a netip.Addr) error
	// DeleteLink removes the interface; a missing one is not an error.
	DeleteLink(name string) error
}

// netlinkLinks is Links on the kernel, via rtnetlink.
type netlinkLinks struct{ h *netlink.Handle }

func newNetlinkLinks(netnsPath string) (*netlinkLinks, error) {
	if netnsPath == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("rtnetlink: %w", err)
		}
		return &netlinkLinks{h: h}, nil
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink in %s: %w", netnsPath, err)
	}
	return &netlinkLinks{h: h}, nil
}

func (n *netlinkLinks) link(name string) (netlink.Link, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up interface %s: %w", name, err)
	}
	return l, nil
}

// EnsureLink creates the dummy interface, left down like kube-ipvs0: the
// kernel answers for addresses on a down interface all the same, but the
// interface gets no routes of its own (see the VM test for IPv6).
func (n *netlinkLinks) EnsureLink(name string) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	if l != nil {
		if l.Type() != "dummy" {
			return fmt.Errorf("interface %s exists but is a %s, not proxyd's dummy interface", name, l.Type())
		}
		return nil
	}
	if err := n.h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("create dummy interface %s (needs the dummy kernel module): %w", name, err)
	}
	return nil
}

// Addrs lists the interface's addresses.
func (n *netlinkLinks) Addrs(name string) ([]netip.Addr, error) {
	l, err := n.link(name)
	if err != nil || l == nil {
		return nil, err
	}
	list, err := n.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	var out []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		out = append(out, ip.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	ad := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
	if a.Is6() {
		ad.Flags = unix.IFA_F_NODAD
	}
	return ad
}

// AddAddr binds a to the interface.
func (n *netlinkLinks) AddAddr(name string, a netip.Addr) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("bind %s: interface %s does not exist", a, name)
	}
	if err := n.h.AddrAdd(l, hostAddr(a)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("bind %s to %s: %w", a, name, err)
	}
	return nil
}

// DelAddr unbinds a from the interface.
func (n *netlinkLinks) DelAddr(name string, a netip.Addr) error {
	l, err := n.link(name)
	if err != nil || l == nil {
		return err
	}
	if err := n.h.AddrDel(l, hostAddr(a)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unbind %s from %s: %w", a, name, err)
	}
	return nil
}

// DeleteLink removes the interface.
func (n *netlinkLinks) DeleteLink(name string) error {
	l, err := n.link(name)
	if err != nil || l == nil {
		return err
	}
	if err := n.h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete interface %s: %w", name, err)
	}
	return nil
}

// FakeLinks is Links in memory. It is safe for concurrent use.
type FakeLinks struct {
	mu    sync.Mutex
	links map[string]map[netip.Addr]bool
	// Unsupported makes EnsureLink fail as on a kernel without dummy.
	Unsupported bool
}

// NewFakeLinks returns a FakeLinks without interfaces.
func NewFakeLinks() *FakeLinks { return &FakeLinks{links: map[string]map[netip.Addr]bool{}} }

// EnsureLink creates the interface.
func (f *FakeLinks) EnsureLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Unsupported {
		return fmt.Errorf("create dummy interface %s: %w", name, syscall.EOPNOTSUPP)
	}
	if f.links[name] == nil {
		f.links[name] = map[netip.Addr]bool{}
	}
	return nil
}

// Exists reports whether the interface exists.
func (f *FakeLinks) Exists(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.links[name] != nil
}

// Addrs lists the interface's addresses, sorted.
func (f *FakeLinks) Addrs(name string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.Addr
	for a := range f.links[name] {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// AddAddr binds a.
func (f *FakeLinks) AddAddr(name string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[name]
	if l == nil {
		return fmt.Errorf("bind %s: interface %s: %w", a, name, syscall.ENODEV)
	}
	l[a] = true
	return nil
}

// DelAddr unbinds a.
func (f *FakeLinks) DelAddr(name string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links[name], a)
	return nil
}

// DeleteLink removes the interface.
func (f *FakeLinks) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
	return nil
}
