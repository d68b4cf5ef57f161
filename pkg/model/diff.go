package model

import (
	"net/netip"
	"slices"
)

// Diff says what changed between two States: which service ports a backend
// must rewrite, and which flows conntrack must forget.
type Diff struct {
	Added   []ServicePortKey
	Updated []ServicePortKey
	Removed []ServicePortKey
	// StaleEndpoints are endpoints that existing flows may still reach but
	// that new traffic must not: they left a port's usable set, or the port
	// went away. Only UDP and SCTP need the conntrack clean-up.
	StaleEndpoints []StaleEndpoint
	// NewlyServed are ports that had no usable endpoint and now have one:
	// conntrack entries created while the VIP rejected must go.
	NewlyServed []ServicePortKey
}

// StaleEndpoint is one endpoint that left one service port.
type StaleEndpoint struct {
	Key ServicePortKey
	// VIPs are the service addresses a stale flow may have been sent to.
	VIPs     []netip.AddrPort
	Endpoint Endpoint
}

// Empty reports whether nothing changed.
func (d Diff) Empty() bool {
	return len(d.Added) == 0 && len(d.Updated) == 0 && len(d.Removed) == 0
}

// Changed returns every key that was added, updated or removed, sorted.
func (d Diff) Changed() []ServicePortKey {
	out := slices.Concat(d.Added, d.Updated, d.Removed)
	slices.SortFunc(out, ServicePortKey.Compare)
	return out
}

// Compute returns the Diff from old to new; a nil old is an empty State.
func Compute(old, new *State) Diff {
	var d Diff
	var oldSvcs map[ServicePortKey]*ServicePort
	if old != nil {
		oldSvcs = old.Services
	}
	for k, n := range new.Services {
		o, ok := oldSvcs[k]
		switch {
		case !ok:
			d.Added = append(d.Added, k)
		case o != n && !o.Equal(n):
			d.Updated = append(d.Updated, k)
			d.StaleEndpoints = append(d.StaleEndpoints, stale(o, n, old.Node)...)
			if len(o.ClusterEndpoints) == 0 && len(n.ClusterEndpoints) > 0 {
				d.NewlyServed = append(d.NewlyServed, k)
			}
		}
		if !ok && len(n.ClusterEndpoints) > 0 {
			d.NewlyServed = append(d.NewlyServed, k)
		}
	}
	for k, o := range oldSvcs {
		if _, ok := new.Services[k]; !ok {
			d.Removed = append(d.Removed, k)
			d.StaleEndpoints = append(d.StaleEndpoints, stale(o, nil, old.Node)...)
		}
	}
	for _, l := range []*[]ServicePortKey{&d.Added, &d.Updated, &d.Removed, &d.NewlyServed} {
		slices.SortFunc(*l, ServicePortKey.Compare)
	}
	slices.SortFunc(d.StaleEndpoints, func(a, b StaleEndpoint) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		return a.Endpoint.AddrPort().Compare(b.Endpoint.AddrPort())
	})
	return d
}

// stale lists o's usable endpoints that n no longer uses (all of them when n
// is nil), tagged with every address a flow to them may have been sent to:
// the ClusterIPs, the external IPs and the node's NodePort addresses.
func stale(o, n *ServicePort, node Node) []StaleEndpoint {
	keep := map[string]bool{}
	if n != nil {
		for _, e := range slices.Concat(n.ClusterEndpoints, n.ExternalEndpoints) {
			keep[e.String()] = true
		}
	}
	var vips []netip.AddrPort
	for _, ip := range slices.Concat(o.ClusterIPs, o.ExternalIPs) {
		vips = append(vips, netip.AddrPortFrom(ip, o.Port))
	}
	if o.NodePort != 0 {
		for _, ip := range node.IPs {
			vips = append(vips, netip.AddrPortFrom(ip, o.NodePort))
		}
	}
	var out []StaleEndpoint
	seen := map[string]bool{}
	for _, e := range slices.Concat(o.ClusterEndpoints, o.ExternalEndpoints) {
		if !keep[e.String()] && !seen[e.String()] {
			seen[e.String()] = true
			out = append(out, StaleEndpoint{Key: o.Key, VIPs: vips, Endpoint: e})
		}
	}
	return out
}
