package ipvs

import (
	"net/netip"
	"slices"

	"github.com/proxyd/proxyd/pkg/model"
)

// TableName is the nftables table (family inet) the backend owns.
const TableName = "proxyd-ipvs"

// Tuple is a ClusterIP, protocol and port: one virtual server.
type Tuple struct {
	Addr     netip.Addr
	Protocol model.Protocol
	Port     uint16
}

// HairpinTuple is an endpoint that may be reached through a Service by
// itself; such a connection is masqueraded (kube-proxy's KUBE-LOOP-BACK).
type HairpinTuple struct {
	Endpoint netip.AddrPort
	Protocol model.Protocol
}

// ShortCircuit sends Pods and the node itself, when they use an external
// address or NodePort of a Service with externalTrafficPolicy Local, to the
// Service's ClusterIP instead, so that they get the whole Service rather
// than this node's endpoints only (the nftables mode does the same).
type ShortCircuit struct {
	From Tuple
	To   netip.AddrPort
}

// SourceGuard admits only Sources to the load-balancer virtual server LB
// (loadBalancerSourceRanges, kube-proxy's KUBE-LOAD-BALANCER-FW and
// KUBE-LOAD-BALANCER-SOURCE-CIDR): a new connection to it from anywhere
// else is dropped before any DNAT or IPVS sees it.
type SourceGuard struct {
	LB Tuple
	// Sources are of LB's family, masked, sorted, none inside another.
	Sources []netip.Prefix
}

// Ruleset is the netfilter side of the IPVS table: the sets and switches
// the proxyd-ipvs nftables table is made of. It masquerades, and rejects
// new connections IPVS does not take: to a ClusterIP on a port or protocol
// no virtual server has, or to an address of the service ranges that is
// no ClusterIP. (A virtual server without real servers needs no rule: IPVS
// rejects those itself.) It drops new connections to a load-balancer IP
// from outside its loadBalancerSourceRanges, and to a ClusterIP of
// internalTrafficPolicy Local served only by other nodes. Its String is the table in
// `nft list` syntax, the golden text of tests.
type Ruleset struct {
	// ClusterIPs are the ClusterIP virtual servers; traffic to them from
	// outside the cluster CIDR of its family is marked for masquerade.
	ClusterIPs []Tuple
	// ExternalMasq are the external virtual servers (NodePorts, external
	// IPs) of externalTrafficPolicy Cluster: all traffic to them is marked
	// for masquerade, since the reply must come back through this node.
	ExternalMasq []Tuple
	// ExternalDrop are the external virtual servers of
	// externalTrafficPolicy Local that have no local endpoint while the
	// Service has some elsewhere: new connections to them are dropped
	// (after ShortCircuits took Pods' and the node's away).
	ExternalDrop []Tuple
	// ShortCircuits are the external virtual servers of
	// externalTrafficPolicy Local whose ClusterIP has endpoints.
	ShortCircuits []ShortCircuit
	// SourceGuards are the load-balancer virtual servers that
	// loadBalancerSourceRanges guard, sorted by LB.
	SourceGuards []SourceGuard
	// InternalDrop are the ClusterIP virtual servers of
	// internalTrafficPolicy Local without a local endpoint while other
	// nodes have usable ones: new connections to them, forwarded or from
	// the node, are dropped before anything else here or IPVS sees them
	// (where IPVS would refuse them). They are also in ClusterIPs.
	InternalDrop []Tuple
	// NodeServers are the virtual servers on the node's own addresses
	// (NodePorts). No rule uses the set they are written to: it records
	// that proxyd owns them, since their addresses are not bound to
	// proxyd-ipvs0, so that a later proxyd (or --cleanup) finds them.
	NodeServers []Tuple
	// ServiceCIDRs are the ClusterIP ranges; new connections to an address
	// in them that IPVS did not take are rejected.
	ServiceCIDRs []netip.Prefix
	// Hairpin are the endpoints whose connections to themselves through
	// a Service are masqueraded.
	Hairpin []HairpinTuple
	// ClusterCIDR4 and ClusterCIDR6 are the Pod ranges; an invalid prefix
	// means none for that family, and then only MasqueradeAll marks.
	ClusterCIDR4, ClusterCIDR6 netip.Prefix
	MasqueradeAll              bool
	// Mark is the masquerade mark bit.
	Mark uint32
}

// Equal reports whether r and o program the same table: whether their
// tables print the same, so a field added to Ruleset cannot be forgotten.
func (r *Ruleset) Equal(o *Ruleset) bool {
	if r == nil || o == nil {
		return r == o
	}
	return r.String() == o.String()
}

// vips returns the distinct ClusterIPs, sorted.
func (r *Ruleset) vips() []netip.Addr {
	var out []netip.Addr
	for _, t := range r.ClusterIPs {
		out = append(out, t.Addr)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// String is the table as `nft list table` prints it.
func (r *Ruleset) String() string { return r.Table().String() }
