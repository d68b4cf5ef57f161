// Package conntrack forgets connection-tracking entries the rules no longer
// send anywhere. A UDP or SCTP flow sticks to its conntrack entry, so to the
// endpoint (or to no endpoint at all, if it was created while the Service
// rejected) it was first given, until the entry is deleted. TCP needs this
// only for connections that were never answered: a client that reuses the
// source port of a refused or unanswered SYN would otherwise follow that
// SYN's entry for two minutes. Established TCP connections are left alone.
//
// The rule is kube-proxy's, applied to UDP, SCTP and unanswered TCP: a
// flow sent to one of a changed service port's destinations whose reply
// does not come from one of the port's serving endpoints is stale. It runs
// after every sync that can have left such a flow, on those ports only.
package conntrack

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
)

// tcpSynSent is conntrack's TCP_CONNTRACK_SYN_SENT.
const tcpSynSent = 1

var protocols = map[model.Protocol]uint8{model.TCP: unix.IPPROTO_TCP, model.UDP: unix.IPPROTO_UDP, model.SCTP: unix.IPPROTO_SCTP}

type destination struct {
	proto uint8
	addr  netip.AddrPort
}

// Plan is the flows one sync leaves stale, indexed by destination so that
// one walk of the conntrack table finds them all.
type Plan struct {
	// keep maps each destination to the reply sources its flows may have:
	// the serving endpoints (nil: none, the destination is gone).
	keep     map[destination]map[netip.AddrPort]bool
	families map[model.IPFamily]bool
}

// NewPlan returns the flows d leaves stale in s: those sent to a retired
// destination, and those sent to a destination of an unsettled port but
// not answered by one of its serving endpoints. On the first sync every
// port is unsettled, so the whole table is reconciled with the rules; a
// sync that only added endpoints plans nothing and walks no table.
func NewPlan(d model.Diff, s *model.State) *Plan {
	p := &Plan{keep: map[destination]map[netip.AddrPort]bool{}, families: map[model.IPFamily]bool{}}
	for _, dst := range d.Retired {
		p.add(dst, nil)
	}
	for _, k := range d.Unsettled {
		if sp := s.Services[k]; sp != nil {
			serving := model.Serving(sp.Endpoints)
			for _, dst := range sp.Destinations() {
				p.add(dst, serving)
			}
		}
	}
	return p
}

func (p *Plan) add(dst model.Destination, serving map[netip.AddrPort]bool) {
	proto, ok := protocols[dst.Protocol]
	if !ok {
		return
	}
	p.keep[destination{proto, dst.Addr}] = serving
	p.families[model.FamilyOf(dst.Addr.Addr())] = true
}

// Empty reports whether no flow can be stale.
func (p *Plan) Empty() bool { return len(p.keep) == 0 }

// Stale reports whether flow is one the plan deletes.
func (p *Plan) Stale(flow *netlink.ConntrackFlow) bool {
	fw, rv := flow.Forward, flow.Reverse
	dst, ok := addrPort(fw.DstIP, fw.DstPort)
	if !ok {
		return false
	}
	serving, found := p.keep[destination{fw.Protocol, dst}]
	if !found {
		everywhere := netip.IPv4Unspecified()
		if dst.Addr().Is6() {
			everywhere = netip.IPv6Unspecified()
		}
		if serving, found = p.keep[destination{fw.Protocol, netip.AddrPortFrom(everywhere, dst.Port())}]; !found {
			return false
		}
	}
	if fw.Protocol == unix.IPPROTO_TCP {
		tcp, ok := flow.ProtoInfo.(*netlink.ProtoInfoTCP)
		if !ok || tcp.State != tcpSynSent {
			return false
		}
	}
	reply, ok := addrPort(rv.SrcIP, rv.SrcPort)
	return !ok || !serving[reply]
}

func addrPort(ip net.IP, port uint16) (netip.AddrPort, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port), ok
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (p *Plan) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool { return p.Stale(flow) }

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

// Clean deletes the plan's stale flows, walking the conntrack table once
// per family it names, and returns how many it deleted and how long each
// walk took, per family; failures are logged, not fatal, since the rules
// are already right and the entries expire anyway.
func (c *Cleaner) Clean(p *Plan) map[model.IPFamily]Result {
	out := map[model.IPFamily]Result{}
	for family := range p.families {
		inet := netlink.InetFamily(unix.AF_INET)
		if family == model.IPv6 {
			inet = unix.AF_INET6
		}
		start := time.Now()
		n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, inet, p)
		out[family] = Result{Deleted: int(n), Took: time.Since(start)}
		if err != nil {
			klog.ErrorS(err, "Could not delete stale conntrack entries", "family", family, "destinations", len(p.keep))
		}
		if n > 0 {
			klog.V(2).InfoS("Deleted stale conntrack entries", "family", family, "entries", n)
		}
	}
	return out
}

// Result is one family's walk of the conntrack table.
type Result struct {
	Deleted int
	Took    time.Duration
}

// Close releases the netlink handle.
func (c *Cleaner) Close() { c.h.Close() }
