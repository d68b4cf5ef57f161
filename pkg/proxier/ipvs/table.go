package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
)

// VSKey is a virtual server's identity in the kernel.
type VSKey struct {
	Addr     netip.Addr
	Protocol model.Protocol
	Port     uint16
}

func (k VSKey) String() string {
	return fmt.Sprintf("%s %s", k.Protocol, netip.AddrPortFrom(k.Addr, k.Port))
}

// Compare orders keys by address, port, protocol.
func (k VSKey) Compare(o VSKey) int {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	if k.Port != o.Port {
		if k.Port < o.Port {
			return -1
		}
		return 1
	}
	return strings.Compare(string(k.Protocol), string(o.Protocol))
}

// RealServer is one destination of a virtual server, always forwarded by
// masquerading (NAT).
type RealServer struct {
	Addr   netip.AddrPort
	Weight int
}

// VirtualServer is one IPVS service proxyd wants.
type VirtualServer struct {
	VSKey
	Scheduler string
	// Timeout is the persistence timeout in seconds (sessionAffinity
	// ClientIP); 0 means not persistent.
	Timeout uint32
	// Service is the service port this virtual server implements.
	Service model.ServicePortKey
	// RealServers are sorted by address.
	RealServers []RealServer

	// External is set for a virtual server of a NodePort or an external
	// (or VIP-mode load-balancer) IP; its real servers are the port's
	// ExternalEndpoints. OnNode says its address is one of the node's own
	// (a NodePort), which proxyd does not bind to proxyd-ipvs0. Local is
	// externalTrafficPolicy Local: no masquerade, and Pods and the node
	// itself are sent to ShortCircuit (the ClusterIP's virtual server,
	// when that has endpoints) instead, so they get the whole Service.
	External     bool
	OnNode       bool
	Local        bool
	ShortCircuit netip.AddrPort
	// SourceRanges, set only on a load-balancer IP's virtual server, are
	// the port's loadBalancerSourceRanges of the address's family: the
	// only sources a new connection to it may come from (none: any).
	SourceRanges []netip.Prefix
	// InternalDrop, set only on a ClusterIP's virtual server, is
	// internalTrafficPolicy Local without an endpoint on this node while
	// another node has a usable one: new connections to it are dropped
	// (not refused) before IPVS sees them, as kube-proxy does. The virtual
	// server itself stays, without real servers.
	InternalDrop bool
}

// Persistent reports whether the virtual server pins clients.
func (v *VirtualServer) Persistent() bool { return v.Timeout > 0 }

// Table is the IPVS table proxyd wants, plus the addresses it binds.
type Table struct {
	Servers map[VSKey]*VirtualServer
	// Conflicts are service ports left out because an earlier one (by key
	// order) already claimed the same address, port and protocol.
	Conflicts []string
	// ServiceCIDRs are the State's ClusterIP ranges.
	ServiceCIDRs []netip.Prefix
	// NodeIPs are the node's addresses NodePorts are served on.
	NodeIPs []netip.Addr
}

// Sorted returns the virtual servers ordered by key.
func (t *Table) Sorted() []*VirtualServer {
	out := make([]*VirtualServer, 0, len(t.Servers))
	for _, v := range t.Servers {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *VirtualServer) int { return a.Compare(b.VSKey) })
	return out
}

// VIPs returns the distinct virtual server addresses proxyd binds to
// proxyd-ipvs0 (ClusterIPs and external IPs, not the node's own addresses
// NodePorts use), sorted.
func (t *Table) VIPs() []netip.Addr {
	var out []netip.Addr
	for k, v := range t.Servers {
		if !v.OnNode {
			out = append(out, k.Addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// String renders the table like `ipvsadm -Ln`, deterministic, for logs and
// golden tests.
func (t *Table) String() string {
	var b strings.Builder
	for _, v := range t.Sorted() {
		fmt.Fprintf(&b, "%-4s %s %s", v.Protocol, netip.AddrPortFrom(v.Addr, v.Port), v.Scheduler)
		if v.Persistent() {
			fmt.Fprintf(&b, " persistent %d", v.Timeout)
		}
		if v.Service != (model.ServicePortKey{}) {
			fmt.Fprintf(&b, "  # %s", v.Service)
			switch {
			case v.OnNode:
				b.WriteString(" nodeport")
			case v.External:
				b.WriteString(" external")
			}
			if v.Local {
				b.WriteString(" local")
				if v.ShortCircuit.IsValid() {
					fmt.Fprintf(&b, ", cluster traffic to %s", v.ShortCircuit)
				}
			}
			if v.InternalDrop {
				b.WriteString(" internal local, no local endpoint: drop")
			}
			for i, p := range v.SourceRanges {
				sep := ","
				if i == 0 {
					sep = ", only from"
				}
				fmt.Fprintf(&b, "%s %s", sep, p)
			}
		}
		b.WriteString("\n")
		for _, r := range v.RealServers {
			fmt.Fprintf(&b, "  -> %s Masq %d\n", r.Addr, r.Weight)
		}
	}
	for _, c := range t.Conflicts {
		fmt.Fprintf(&b, "# conflict: %s\n", c)
	}
	return b.String()
}

func protoNumber(p model.Protocol) uint16 { return uint16(p.Number()) }

func protoOf(n uint16) (model.Protocol, bool) {
	if n > 0xff {
		return "", false
	}
	return model.ProtocolOf(uint8(n))
}

func protoName(n uint16) string {
	if p, ok := protoOf(n); ok {
		return string(p)
	}
	return fmt.Sprintf("proto-%d", n)
}
