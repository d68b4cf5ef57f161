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
// protocol and, when Endpoint is valid, DNATed to it. For TCP only
// connections still waiting for the endpoint's SYN-ACK match.
type Filter struct {
	Proto    model.Protocol
	VIP      netip.AddrPort
	Endpoint netip.Addr
}

// tcpSynSent is conntrack's TCP_CONNTRACK_SYN_SENT.
const tcpSynSent = 1

// Match reports whether a flow is one f deletes.
func (f Filter) Match(flow *netlink.ConntrackFlow) bool {
	proto := map[model.Protocol]uint8{model.TCP: unix.IPPROTO_TCP, model.UDP: unix.IPPROTO_UDP, model.SCTP: unix.IPPROTO_SCTP}[f.Proto]
	fw, rv := flow.Forward, flow.Reverse
	if fw.Protocol != proto || fw.DstPort != f.VIP.Port() || !sameIP(fw.DstIP, f.VIP.Addr()) {
		return false
	}
	if f.Endpoint.IsValid() && !sameIP(rv.SrcIP, f.Endpoint) {
		return false
	}
	if f.Proto == model.TCP {
		tcp, ok := flow.ProtoInfo.(*netlink.ProtoInfoTCP)
		return ok && tcp.State == tcpSynSent
	}
	return true
}

func sameIP(ip net.IP, a netip.Addr) bool {
	b, ok := netip.AddrFromSlice(ip)
	return ok && b.Unmap() == a.Unmap()
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f Filter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool { return f.Match(flow) }

// Filters returns the flows d makes stale: UDP and SCTP flows to a removed
// endpoint, TCP connections to it that never got an answer (a client that
// reuses the source port would otherwise be sent to the dead Pod until the
// entry expires), and UDP/SCTP flows to a VIP that just got its first
// endpoint (created while it rejected, they would keep failing).
// Established TCP connections are left alone: the stack ends them.
func Filters(d model.Diff, s *model.State) []Filter {
	var out []Filter
	for _, se := range d.StaleEndpoints {
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

// Clean deletes the flows of every filter, walking the conntrack table
// once per family, and returns how many it deleted per family; failures
// are logged, not fatal, since the rules are already right and the entries
// expire anyway.
func (c *Cleaner) Clean(filters []Filter) map[model.IPFamily]int {
	byFamily := map[netlink.InetFamily][]netlink.CustomConntrackFilter{}
	for _, f := range filters {
		family := netlink.InetFamily(unix.AF_INET)
		if f.VIP.Addr().Is6() {
			family = unix.AF_INET6
		}
		byFamily[family] = append(byFamily[family], f)
	}
	deleted := map[model.IPFamily]int{}
	for family, fs := range byFamily {
		n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, family, fs...)
		if err != nil {
			klog.ErrorS(err, "Could not delete stale conntrack entries", "family", family, "filters", len(fs))
		}
		if n > 0 {
			f := model.IPv4
			if family == unix.AF_INET6 {
				f = model.IPv6
			}
			deleted[f] += int(n)
			klog.V(2).InfoS("Deleted stale conntrack entries", "family", f, "entries", n, "filters", len(fs))
		}
	}
	return deleted
}

// Close releases the netlink handle.
func (c *Cleaner) Close() { c.h.Close() }
