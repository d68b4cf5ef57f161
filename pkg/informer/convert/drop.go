package convert

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	netutils "k8s.io/utils/net"
)

// Drop is one part of an object that proxyd leaves out, or the whole object
// (Field ""), and why. The informer logs each one and posts it as an
// Event.
type Drop struct {
	Field  string // e.g. "spec.externalIPs[1]"
	Value  string
	Reason string
	// Expected marks objects proxyd is not meant to proxy (type
	// ExternalName, clusterIP None): they are logged, not reported as
	// Warning Events.
	Expected bool
}

func (d Drop) String() string {
	if d.Field == "" {
		return d.Reason
	}
	return fmt.Sprintf("%s %q: %s", d.Field, d.Value, d.Reason)
}

// drops collects the Drops of one conversion.
type drops []Drop

func (ds *drops) add(field, value, reason string) {
	*ds = append(*ds, Drop{Field: field, Value: value, Reason: reason})
}

var (
	errZone    = errors.New("an address with an IPv6 zone names an interface of another host")
	errNotAnIP = errors.New("not an IP address")
)

// parseAddr reads an address as kube-proxy does (netutils.ParseIPSloppy):
// IPv4 octets with leading zeros are decimal, so "010.001.002.003" is
// 10.1.2.3, as Go read them before 1.17 and as objects stored then still
// hold them. An IPv4-mapped IPv6 address is its IPv4 address. Zones
// ("fd00::1%eth0") are refused: a rule cannot match them.
func parseAddr(s string) (netip.Addr, error) {
	if strings.Contains(s, "%") {
		return netip.Addr{}, errZone
	}
	ip, ok := netip.AddrFromSlice(netutils.ParseIPSloppy(s))
	if !ok {
		return netip.Addr{}, errNotAnIP
	}
	return ip.Unmap(), nil
}

// parsePrefix reads a range as kube-proxy does (netutils.ParseCIDRSloppy),
// after trimming the spaces that validation lets loadBalancerSourceRanges
// carry. The result is masked.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "%") {
		return netip.Prefix{}, errZone
	}
	_, n, err := netutils.ParseCIDRSloppy(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an address range")
	}
	ip, _ := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	if ip.Is4In6() {
		ip = ip.Unmap()
	}
	return netip.PrefixFrom(ip, bits).Masked(), nil
}
