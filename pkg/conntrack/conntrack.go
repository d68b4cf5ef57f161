// Package conntrack forgets connection-tracking entries that would keep
// sending datagrams to endpoints that are gone. TCP needs none of this (a
// dead Pod's connections reset), but a UDP or SCTP flow sticks to its
// conntrack entry, and so to a removed endpoint, until the entry is
// deleted. It consumes the model's Diff, after a successful sync.
package conntrack

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
)

// Filter is one set of flows to delete: those sent to VIP with the given
// protocol and, when Endpoint is valid, DNATed to it.
type Filter struct {
	Proto    model.Protocol
	VIP      netip.AddrPort
	Endpoint netip.Addr
}

// Filters returns the flows d makes stale: UDP and SCTP flows to a removed
// endpoint, and flows to a VIP that just got its first endpoint (created
// while it rejected, they would keep failing). TCP is left to the stack.
func Filters(d model.Diff, s *model.State) []Filter {
	var out []Filter
	for _, se := range d.StaleEndpoints {
		if se.Key.Protocol == model.TCP {
			continue
		}
		for _, vip := range se.VIPs {
			out = append(out, Filter{Proto: se.Key.Protocol, VIP: vip, Endpoint: se.Endpoint.IP})
		}
	}
	for _, k := range d.NewlyServed {
		sp := s.Services[k]
		if sp == nil || k.Protocol == model.TCP {
			continue
		}
		for _, ip := range sp.ClusterIPs {
			out = append(out, Filter{Proto: k.Protocol, VIP: netip.AddrPortFrom(ip, sp.Port)})
		}
	}
	return out
}

// Cleaner deletes entries through ctnetlink in one network namespace.
type Cleaner struct{ h *netlink.Handle }

// New returns a Cleaner for the current network namespace.
func New() (*Cleaner, error) {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open netlink: %w", err)
	}
	return &Cleaner{h: h}, nil
}

// Clean deletes the flows of every filter; failures are logged, not fatal,
// since the rules are already right and the entries will time out anyway.
func (c *Cleaner) Clean(filters []Filter) int {
	deleted := 0
	for _, f := range filters {
		n, err := c.clean(f)
		if err != nil {
			klog.ErrorS(err, "Could not delete conntrack entries", "vip", f.VIP, "endpoint", f.Endpoint, "protocol", f.Proto)
			continue
		}
		deleted += int(n)
	}
	if deleted > 0 {
		klog.V(2).InfoS("Deleted stale conntrack entries", "entries", deleted, "filters", len(filters))
	}
	return deleted
}

func (c *Cleaner) clean(f Filter) (uint, error) {
	cf := &netlink.ConntrackFilter{}
	proto := uint8(unix.IPPROTO_UDP)
	if f.Proto == model.SCTP {
		proto = unix.IPPROTO_SCTP
	}
	if err := cf.AddProtocol(proto); err != nil {
		return 0, err
	}
	if err := cf.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.VIP.Addr().AsSlice())); err != nil {
		return 0, err
	}
	if err := cf.AddPort(netlink.ConntrackOrigDstPort, f.VIP.Port()); err != nil {
		return 0, err
	}
	if f.Endpoint.IsValid() {
		if err := cf.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.Endpoint.AsSlice())); err != nil {
			return 0, err
		}
	}
	family := netlink.InetFamily(unix.AF_INET)
	if f.VIP.Addr().Is6() {
		family = unix.AF_INET6
	}
	return c.h.ConntrackDeleteFilters(netlink.ConntrackTable, family, cf)
}

// Close releases the netlink handle.
func (c *Cleaner) Close() { c.h.Close() }
