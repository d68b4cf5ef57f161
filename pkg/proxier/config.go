package proxier

import "net/netip"

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
