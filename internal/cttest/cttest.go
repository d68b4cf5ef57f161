// Package cttest fills the conntrack table of a test's network namespace
// with entries shaped like a node's: client connections to Service VIPs,
// answered by Pods after DNAT.
package cttest

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Flow is one entry to create: a connection from Src to Dst (the VIP),
// answered by Reply (the endpoint).
type Flow struct {
	Proto    uint8 // unix.IPPROTO_TCP or IPPROTO_UDP
	Src, Dst netip.AddrPort
	Reply    netip.AddrPort
	TCPState uint8 // for TCP; e.g. 3 (ESTABLISHED)
	Timeout  uint32
}

// Table creates entries in one namespace's conntrack table.
type Table struct{ h *netlink.Handle }

// Open returns a Table for the namespace netnsFD refers to (0: the
// caller's).
func Open(netnsFD int) (*Table, error) {
	var h *netlink.Handle
	var err error
	if netnsFD > 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(netnsFD), unix.NETLINK_NETFILTER)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		return nil, fmt.Errorf("cttest: netlink handle: %w", err)
	}
	return &Table{h: h}, nil
}

// Close releases the handle.
func (t *Table) Close() { t.h.Close() }

// Create adds f to the table.
func (t *Table) Create(f Flow) error {
	fam := netlink.InetFamily(unix.AF_INET)
	if f.Src.Addr().Is6() {
		fam = unix.AF_INET6
	}
	timeout := f.Timeout
	if timeout == 0 {
		timeout = 3600
	}
	flow := &netlink.ConntrackFlow{
		FamilyType: uint8(fam),
		Forward: netlink.IPTuple{Protocol: f.Proto, SrcIP: ip(f.Src.Addr()), DstIP: ip(f.Dst.Addr()),
			SrcPort: f.Src.Port(), DstPort: f.Dst.Port()},
		Reverse: netlink.IPTuple{Protocol: f.Proto, SrcIP: ip(f.Reply.Addr()), DstIP: ip(f.Src.Addr()),
			SrcPort: f.Reply.Port(), DstPort: f.Src.Port()},
		TimeOut: timeout,
	}
	if f.Proto == unix.IPPROTO_TCP {
		flow.ProtoInfo = &netlink.ProtoInfoTCP{State: f.TCPState}
	}
	if err := t.h.ConntrackCreate(netlink.ConntrackTable, fam, flow); err != nil {
		return fmt.Errorf("cttest: create %v → %v: %w", f.Src, f.Dst, err)
	}
	return nil
}

// Delete removes the entry of f, if present.
func (t *Table) Delete(f Flow) error {
	fam := netlink.InetFamily(unix.AF_INET)
	if f.Src.Addr().Is6() {
		fam = unix.AF_INET6
	}
	filter := &netlink.ConntrackFilter{}
	if err := filter.AddIP(netlink.ConntrackOrigSrcIP, ip(f.Src.Addr())); err != nil {
		return err
	}
	if err := filter.AddProtocol(f.Proto); err != nil {
		return err
	}
	if err := filter.AddPort(netlink.ConntrackOrigSrcPort, f.Src.Port()); err != nil {
		return err
	}
	_, err := t.h.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filter)
	return err
}

// Node returns the i-th entry of a node-shaped table: TCP connections in
// state ESTABLISHED from 2^16 clients per /16 to vips VIPs on port 80,
// each answered by one of eps endpoints per VIP on port 8080.
func Node(i, vips, eps int) Flow {
	src := netip.AddrFrom4([4]byte{10, 100 + byte(i>>24), byte(i >> 16), byte(i >> 8)})
	vip := i % vips
	ep := (i / vips) % eps
	return Flow{
		Proto:    unix.IPPROTO_TCP,
		Src:      netip.AddrPortFrom(src, uint16(10000+i&0xff)),
		Dst:      netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(vip >> 8), byte(vip)}), 80),
		Reply:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(vip >> 4), byte(vip<<4) + byte(ep)}), 8080),
		TCPState: 3,
	}
}

func ip(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }
