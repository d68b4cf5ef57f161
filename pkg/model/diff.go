package model

import (
	"net/netip"
	"slices"
)

// Diff says what changed between two States: which service ports a backend
// must rewrite, and where conntrack must look for flows the rules no longer
// send anywhere.
type Diff struct {
	Added   []ServicePortKey
	Updated []ServicePortKey
	Removed []ServicePortKey
	// Retired are the destinations of removed ports, and those an updated
	// port no longer has: flows still sent there follow rules that are gone.
	Retired []Destination
	// Unsettled are the ports whose flows may now go where the rules no
	// longer send: every added port (on the first sync, all of them), and
	// each updated one that lost a serving endpoint, got its first, or
	// changed where clients reach it. A port that only gained endpoints
	// is not here: every flow it had still goes somewhere that serves.
	Unsettled []ServicePortKey
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
		d.add(k, oldSvcs[k], n)
	}
	for k, o := range oldSvcs {
		if _, ok := new.Services[k]; !ok {
			d.add(k, o, nil)
		}
	}
	d.sort()
	return d
}

// ComputeKeys is Compute for the ports keys only, each named once: callers
// that know what changed pay for that, not for the whole State.
func ComputeKeys(old, new *State, keys []ServicePortKey) Diff {
	var d Diff
	for _, k := range keys {
		d.add(k, old.port(k), new.port(k))
	}
	d.sort()
	return d
}

func (s *State) port(k ServicePortKey) *ServicePort {
	if s == nil {
		return nil
	}
	return s.Services[k]
}

// add records how port k went from o to n (nil: absent).
func (d *Diff) add(k ServicePortKey, o, n *ServicePort) {
	switch {
	case o == nil && n == nil:
	case o == nil:
		d.Added = append(d.Added, k)
		d.Unsettled = append(d.Unsettled, k)
	case n == nil:
		d.Removed = append(d.Removed, k)
		d.Retired = append(d.Retired, o.Destinations()...)
	case o != n && !o.Equal(n):
		d.Updated = append(d.Updated, k)
		d.Retired = append(d.Retired, retired(o, n)...)
		if unsettles(o, n) {
			d.Unsettled = append(d.Unsettled, k)
		}
	}
}

func (d *Diff) sort() {
	for _, l := range []*[]ServicePortKey{&d.Added, &d.Updated, &d.Removed, &d.Unsettled} {
		slices.SortFunc(*l, ServicePortKey.Compare)
	}
	slices.SortFunc(d.Retired, Destination.Compare)
}

// retired lists the destinations of o that n does not have.
func retired(o, n *ServicePort) []Destination {
	keep := n.Destinations()
	var out []Destination
	for _, dst := range o.Destinations() {
		if !slices.Contains(keep, dst) {
			out = append(out, dst)
		}
	}
	return out
}

// unsettles reports whether going from o to n can leave a flow of the
// port where no rule sends it: an endpoint stopped serving, the first one
// started (flows created while the port rejected), or the port's
// destinations changed.
func unsettles(o, n *ServicePort) bool {
	before, after := Serving(o.Endpoints), Serving(n.Endpoints)
	if len(before) == 0 && len(after) > 0 {
		return true
	}
	for ep := range before {
		if !after[ep] {
			return true
		}
	}
	return !slices.Equal(o.Destinations(), n.Destinations())
}

// Serving returns the destinations of eps that are ready or serving: where
// a flow may stay.
func Serving(eps []Endpoint) map[netip.AddrPort]bool {
	out := make(map[netip.AddrPort]bool, len(eps))
	for _, e := range eps {
		if e.Ready || e.Serving {
			out[e.AddrPort()] = true
		}
	}
	return out
}
