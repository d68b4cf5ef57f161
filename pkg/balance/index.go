package balance

import (
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
)

// index maps a conntrack entry to the Service and endpoint it belongs to,
// built from the State proxyd programmed.
type index struct {
	// dests are the exact destinations: ClusterIPs, external and
	// load-balancer IPs with their port; nodePorts the NodePorts, which
	// answer on any node address.
	dests     map[dest]*portRef
	nodePorts map[dest]*portRef
	services  []*service
}

type dest struct {
	proto uint8
	addr  netip.AddrPort
}

// portRef is one service port: its Service and, for each endpoint that
// may answer (any condition: terminating endpoints keep connections), the
// endpoint's position in the Service's list.
type portRef struct {
	svc *service
	eps map[netip.AddrPort]int
}

// service is one Service's endpoints, by address, merged over its ports.
type service struct {
	name model.NamespacedName
	ips  []netip.Addr
	// candidate: a ready endpoint new connections may reach from this
	// node; since: when proxyd first programmed it so (min over ports).
	candidate []bool
	since     []readyMark
}

var l4 = map[model.Protocol]uint8{model.TCP: unix.IPPROTO_TCP, model.UDP: unix.IPPROTO_UDP, model.SCTP: unix.IPPROTO_SCTP}

func buildIndex(s *model.State, since map[model.ServicePortKey]map[netip.Addr]readyMark) *index {
	ix := &index{dests: map[dest]*portRef{}, nodePorts: map[dest]*portRef{}}
	bySvc := map[model.NamespacedName][]*model.ServicePort{}
	for _, sp := range s.Sorted() {
		bySvc[sp.Key.Service()] = append(bySvc[sp.Key.Service()], sp)
	}
	names := make([]model.NamespacedName, 0, len(bySvc))
	for n := range bySvc {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b model.NamespacedName) int { return compareNames(a, b) })
	for _, name := range names {
		ports := bySvc[name]
		svc := &service{name: name}
		pos := map[netip.Addr]int{}
		at := func(ip netip.Addr) int {
			if i, ok := pos[ip]; ok {
				return i
			}
			pos[ip] = len(svc.ips)
			svc.ips = append(svc.ips, ip)
			svc.candidate = append(svc.candidate, false)
			svc.since = append(svc.since, readyMark{})
			return pos[ip]
		}
		for _, sp := range ports {
			ref := &portRef{svc: svc, eps: make(map[netip.AddrPort]int, len(sp.Endpoints))}
			for _, e := range sp.Endpoints {
				ref.eps[e.AddrPort()] = at(e.IP)
			}
			for _, ip := range candidateIPs(sp) {
				i := at(ip)
				svc.candidate[i] = true
				if m, ok := since[sp.Key][ip]; ok && (svc.since[i].at.IsZero() || m.at.Before(svc.since[i].at)) {
					svc.since[i] = m
				}
			}
			proto := l4[sp.Key.Protocol]
			for _, d := range sp.Destinations() {
				if d.Addr.Addr().IsUnspecified() {
					ix.nodePorts[dest{proto, d.Addr}] = ref
				} else {
					ix.dests[dest{proto, d.Addr}] = ref
				}
			}
		}
		ix.services = append(ix.services, svc)
	}
	return ix
}

func compareNames(a, b model.NamespacedName) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}

// lookup returns the Service and endpoint position of an entry that a
// Service's rules translated: sent to one of its destinations and answered
// by one of its endpoints.
func (ix *index) lookup(e *conntrack.Entry) (*service, int, bool) {
	ref, ok := ix.dests[dest{e.Proto, e.Orig.Dst}]
	if !ok {
		any := netip.IPv4Unspecified()
		if e.Orig.Dst.Addr().Is6() {
			any = netip.IPv6Unspecified()
		}
		if ref, ok = ix.nodePorts[dest{e.Proto, netip.AddrPortFrom(any, e.Orig.Dst.Port())}]; !ok {
			return nil, 0, false
		}
	}
	i, ok := ref.eps[e.Reply.Src]
	if !ok {
		return nil, 0, false
	}
	return ref.svc, i, true
}
