package proxier

import (
	"net/netip"

	"github.com/proxyd/proxyd/pkg/model"
)

// Config is the node-wide behaviour every backend shares; it comes from
// flags, not from the apiserver.
type Config struct {
	// ClusterCIDRs are the Pod ranges (--cluster-cidr). Traffic to a
	// ClusterIP from outside them is masqueraded, as in kube-proxy.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic sent to a ClusterIP.
	MasqueradeAll bool
	// MasqueradeMark is the packet mark bit that requests masquerade
	// (kube-proxy's --iptables-masquerade-bit, default 14 → 0x4000).
	MasqueradeMark uint32
	// LocalhostNodePorts lets iptables mode serve NodePorts on 127.0.0.1
	// too (kube-proxy's --iptables-localhost-nodeports); other modes and
	// IPv6 never do, as in kube-proxy.
	LocalhostNodePorts bool
	// NodePortAddresses restricts NodePorts to the node's addresses inside
	// these ranges, and NodePortPrimary to its primary address of each
	// family (kube-proxy's --nodeport-addresses, "primary"). Neither set
	// means every local address.
	NodePortAddresses []netip.Prefix
	NodePortPrimary   bool
	// ConntrackTCPLiberal is nf_conntrack_tcp_be_liberal: when it is not
	// set, iptables mode drops forwarded packets conntrack finds INVALID
	// (an out-of-window segment would otherwise reach a Pod un-NATed and
	// be answered with a reset), as kube-proxy does.
	ConntrackTCPLiberal bool
}

// NodePortIPs returns the addresses of family f that NodePorts answer on
// for node, or all=true when every local address does. The node's
// addresses are those of its Node object, primary (first) first.
func (c Config) NodePortIPs(node model.Node, f model.IPFamily) (ips []netip.Addr, all bool) {
	if len(c.NodePortAddresses) == 0 && !c.NodePortPrimary {
		return nil, true
	}
	for _, p := range c.NodePortAddresses {
		if model.FamilyOf(p.Addr()) == f && p.Bits() == 0 {
			return nil, true
		}
	}
	first := true
	for _, ip := range node.IPs {
		ip = ip.Unmap()
		if model.FamilyOf(ip) != f {
			continue
		}
		in := c.NodePortPrimary && first
		first = false
		for _, p := range c.NodePortAddresses {
			in = in || p.Contains(ip)
		}
		if in {
			ips = append(ips, ip)
		}
	}
	return ips, false
}

// NodePortsOnLoopback reports whether NodePorts of family f may answer on
// loopback at all: every address, or a range that holds the loopback one.
func (c Config) NodePortsOnLoopback(f model.IPFamily) bool {
	if len(c.NodePortAddresses) == 0 && !c.NodePortPrimary {
		return true
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if f == model.IPv6 {
		lo = netip.IPv6Loopback()
	}
	for _, p := range c.NodePortAddresses {
		if p.Contains(lo) || model.FamilyOf(p.Addr()) == f && p.Bits() == 0 {
			return true
		}
	}
	return false
}

// DefaultMasqueradeMark is 1<<14, kube-proxy's default.
const DefaultMasqueradeMark uint32 = 1 << 14

// ClusterCIDR returns the first cluster CIDR of the given family (4 or 6).
func (c Config) ClusterCIDR(family int) (netip.Prefix, bool) {
	for _, p := range c.ClusterCIDRs {
		if (family == 4) == p.Addr().Is4() {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// Mark returns the masquerade mark, defaulting to DefaultMasqueradeMark.
func (c Config) Mark() uint32 {
	if c.MasqueradeMark == 0 {
		return DefaultMasqueradeMark
	}
	return c.MasqueradeMark
}
