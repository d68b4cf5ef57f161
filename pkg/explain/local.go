package explain

import (
	"net"
	"net/netip"
)

// InterfaceAddrs returns a test of whether an address is one of this
// network namespace's own (what the addrtype LOCAL match and fib daddr
// type local see), read once now.
func InterfaceAddrs() func(netip.Addr) bool {
	own := map[netip.Addr]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				own[p.Addr().Unmap()] = true
			}
		}
	}
	return func(a netip.Addr) bool { return a.IsLoopback() || own[a.Unmap()] }
}
