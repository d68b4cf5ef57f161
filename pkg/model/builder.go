package model

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
)

// Changes are the objects that changed since the previous Update, by name,
// with their new values (nil: gone). The informer collects them.
type Changes struct {
	// Node is the node's new identity; nil when it did not change.
	Node     *Node
	Services map[NamespacedName]*Service
	Slices   map[NamespacedName]*EndpointSlice
	// ServiceCIDRs are all the ranges, when CIDRsChanged.
	ServiceCIDRs []netip.Prefix
	CIDRsChanged bool
}

// Builder keeps the State of a node up to date from Changes: the work of
// an Update follows the objects that changed (the Services named, the
// Services of the slices named, and the service ports that claim a
// destination one of those claims), not the size of the cluster. A node
// change rebuilds everything. The zero value is ready to use; a Builder is
// not safe for concurrent use.
type Builder struct {
	node     Node
	services map[NamespacedName]*Service
	slices   map[NamespacedName]*EndpointSlice
	bySvc    map[NamespacedName][]*EndpointSlice // sorted by slice name
	// raw are each Service's ports as buildService made them.
	raw map[NamespacedName][]*ServicePort
	// first holds the raw ports' ClusterIP claims; eff are the ports once
	// the ClusterIPs they lost are gone (see Conflict); second holds the
	// other claims of eff (a ClusterIP an eff port has is its own, and
	// beats them all). lost1 and lost2 are the conflicts of each.
	first, second contests
	eff           map[ServicePortKey]*ServicePort
	lost1, lost2  map[Destination][]Conflict
	st            *State
}

func (b *Builder) init() {
	if b.st != nil {
		return
	}
	b.services = map[NamespacedName]*Service{}
	b.slices = map[NamespacedName]*EndpointSlice{}
	b.bySvc = map[NamespacedName][]*EndpointSlice{}
	b.raw = map[NamespacedName][]*ServicePort{}
	b.first, b.second = contests{}, contests{}
	b.eff = map[ServicePortKey]*ServicePort{}
	b.lost1, b.lost2 = map[Destination][]Conflict{}, map[Destination][]Conflict{}
	b.st = &State{Services: map[ServicePortKey]*ServicePort{}, byService: map[NamespacedName][]ServicePortKey{}}
}

// Update applies ch and returns the State and the keys of the service
// ports that were added, changed or removed by it, sorted. The State is
// the Builder's own and changes with the next Update: keep its
// ServicePorts (which never change), not the State.
func (b *Builder) Update(ch Changes) (*State, []ServicePortKey) {
	b.init()
	dirty := map[NamespacedName]bool{}
	if ch.Node != nil && !b.node.equal(*ch.Node) {
		b.node = *ch.Node
		b.st.Node = b.node
		for n := range b.services {
			dirty[n] = true
		}
	}
	if ch.CIDRsChanged {
		b.st.ServiceCIDRs = normalPrefixes(ch.ServiceCIDRs)
	}
	for n, es := range ch.Slices {
		if b.slices[n] == es {
			continue
		}
		if old := b.slices[n]; old != nil {
			dirty[b.unindex(old)] = true
			delete(b.slices, n)
		}
		if es != nil && es.ServiceName != "" {
			b.slices[n] = es
			dirty[b.index(es)] = true
		}
	}
	for n, svc := range ch.Services {
		if b.services[n] == svc {
			continue
		}
		if svc == nil {
			delete(b.services, n)
		} else {
			b.services[n] = svc
		}
		dirty[n] = true
	}
	return b.st, b.settle(dirty)
}

func sliceService(es *EndpointSlice) NamespacedName {
	return NamespacedName{Namespace: es.Namespace, Name: es.ServiceName}
}

// index adds es to its Service's slices and returns the Service's name.
func (b *Builder) index(es *EndpointSlice) NamespacedName {
	n := sliceService(es)
	list := b.bySvc[n]
	i, _ := slices.BinarySearchFunc(list, es.Name, func(e *EndpointSlice, name string) int { return cmp.Compare(e.Name, name) })
	b.bySvc[n] = slices.Insert(list, i, es)
	return n
}

// unindex removes es from its Service's slices and returns the Service's
// name.
func (b *Builder) unindex(es *EndpointSlice) NamespacedName {
	n := sliceService(es)
	list := slices.DeleteFunc(b.bySvc[n], func(e *EndpointSlice) bool { return e == es })
	if len(list) == 0 {
		delete(b.bySvc, n)
	} else {
		b.bySvc[n] = list
	}
	return n
}

// settle rebuilds the dirty Services' ports, settles the claims they
// touch, and returns the keys whose final port changed.
func (b *Builder) settle(dirty map[NamespacedName]bool) []ServicePortKey {
	// The raw ports and their ClusterIP claims.
	touched := map[Destination]bool{}
	recheck := map[ServicePortKey]bool{}
	for n := range dirty {
		for _, sp := range b.raw[n] {
			for _, d := range clusterIPDests(sp) {
				b.first.remove(d, sp.Key, ClusterIPClaim)
				touched[d] = true
			}
			recheck[sp.Key] = true
		}
		delete(b.raw, n)
		svc := b.services[n]
		if svc == nil {
			continue
		}
		ports := buildService(n, svc, b.bySvc[n], b.node)
		for _, sp := range ports {
			for _, d := range clusterIPDests(sp) {
				b.first.add(d, claimant{sp.Key, ClusterIPClaim, svc.Created})
				touched[d] = true
			}
			recheck[sp.Key] = true
		}
		if len(ports) > 0 {
			b.raw[n] = ports
		}
	}
	settleConflicts(b.first, b.lost1, touched, recheck)

	// The ports without the ClusterIPs they lost, and their other claims;
	// a destination whose ClusterIP claims changed is settled again.
	final := map[ServicePortKey]bool{}
	for k := range recheck {
		old, now := b.eff[k], b.effective(k)
		if samePort(old, now) {
			if !dirty[k.Service()] {
				continue
			}
			// The port is the same, but its Service's creation time,
			// which the claims carry, may not be.
			now = old
		}
		if old != nil {
			for _, c := range otherClaims(old) {
				b.second.remove(c.dest, k, c.kind)
				touched[c.dest] = true
			}
			delete(b.eff, k)
		}
		if now != nil {
			created := b.services[k.Service()].Created
			for _, c := range otherClaims(now) {
				b.second.add(c.dest, claimant{k, c.kind, created})
				touched[c.dest] = true
			}
			b.eff[k] = now
		}
		final[k] = true
	}
	for d := range touched {
		if s, ok := b.second[d]; ok {
			for _, cl := range s.all() {
				final[cl.key] = true
			}
		}
		if cs := b.otherConflicts(d); len(cs) > 0 {
			b.lost2[d] = cs
		} else {
			delete(b.lost2, d)
		}
	}

	var changed []ServicePortKey
	for k := range final {
		old, now := b.st.Services[k], b.final(k)
		if samePort(old, now) {
			continue
		}
		switch {
		case now == nil:
			delete(b.st.Services, k)
			b.st.unindex(k)
		case old == nil:
			b.st.Services[k] = now
			b.st.byService[k.Service()] = append(b.st.byService[k.Service()], k)
		default:
			b.st.Services[k] = now
		}
		changed = append(changed, k)
	}
	b.st.Conflicts = b.conflicts()
	slices.SortFunc(changed, ServicePortKey.Compare)
	return changed
}

// settleConflicts records the conflicts of every touched destination in
// lost, and adds every claimant of one to recheck.
func settleConflicts(c contests, lost map[Destination][]Conflict, touched map[Destination]bool, recheck map[ServicePortKey]bool) {
	for d := range touched {
		if s, ok := c[d]; ok {
			for _, cl := range s.all() {
				recheck[cl.key] = true
			}
		}
		if cs := c.conflicts(d); len(cs) > 0 {
			lost[d] = cs
		} else {
			delete(lost, d)
		}
	}
}

// unindex removes k from the per-Service index.
func (s *State) unindex(k ServicePortKey) {
	n := k.Service()
	keys := slices.DeleteFunc(s.byService[n], func(x ServicePortKey) bool { return x == k })
	if len(keys) == 0 {
		delete(s.byService, n)
	} else {
		s.byService[n] = keys
	}
}

// samePort reports whether a and b program the same, absent included.
func samePort(a, b *ServicePort) bool {
	return a == b || a != nil && b != nil && a.Equal(b)
}

// clusterIPDests are the destinations of sp's ClusterIPs at its port.
func clusterIPDests(sp *ServicePort) []Destination {
	out := make([]Destination, len(sp.ClusterIPs))
	for i, ip := range sp.ClusterIPs {
		out[i] = Destination{Protocol: sp.Key.Protocol, Addr: netip.AddrPortFrom(ip, sp.Port)}
	}
	return out
}

// rawPort returns the port k as buildService made it, if any.
func (b *Builder) rawPort(k ServicePortKey) *ServicePort {
	for _, sp := range b.raw[k.Service()] {
		if sp.Key == k {
			return sp
		}
	}
	return nil
}

// effective is port k without the ClusterIPs it lost to another port (and
// so without their families); nil when it lost them all.
func (b *Builder) effective(k ServicePortKey) *ServicePort {
	sp := b.rawPort(k)
	if sp == nil {
		return nil
	}
	dests := clusterIPDests(sp)
	var left []netip.Addr
	for i, d := range dests {
		if b.first.holds(d, k, ClusterIPClaim) {
			left = append(left, sp.ClusterIPs[i])
		}
	}
	if len(left) == len(sp.ClusterIPs) {
		return sp
	}
	n := k.Service()
	return rebuildPort(k, b.services[n], left, b.bySvc[n], b.node)
}

// otherHolds reports whether k's claim of kind (not a ClusterIP) on d
// wins: no ClusterIP is at d, and it beats the other such claims.
func (b *Builder) otherHolds(d Destination, k ServicePortKey, kind ClaimKind) bool {
	if _, taken := b.first[d]; taken {
		return false
	}
	return b.second.holds(d, k, kind)
}

// otherConflicts lists the claims on d other than ClusterIPs that lose:
// all of them to a ClusterIP there, else all but the best.
func (b *Builder) otherConflicts(d Destination) []Conflict {
	w, taken := b.first.winner(d)
	if !taken {
		return b.second.conflicts(d)
	}
	s, ok := b.second[d]
	if !ok {
		return nil
	}
	var out []Conflict
	for _, cl := range s.all() {
		out = append(out, Conflict{Destination: d, Loser: cl.key, LoserKind: cl.kind, Winner: w.key, WinnerKind: w.kind})
	}
	return out
}

// final is the effective port k without the other destinations it lost.
func (b *Builder) final(k ServicePortKey) *ServicePort {
	sp := b.eff[k]
	if sp == nil {
		return nil
	}
	var lost []destClaim
	for _, c := range otherClaims(sp) {
		if !b.otherHolds(c.dest, k, c.kind) {
			lost = append(lost, c)
		}
	}
	if len(lost) == 0 {
		return sp
	}
	return without(sp, lost)
}

// conflicts lists every live conflict, sorted.
func (b *Builder) conflicts() []Conflict {
	if len(b.lost1)+len(b.lost2) == 0 {
		return nil
	}
	var out []Conflict
	for _, lost := range []map[Destination][]Conflict{b.lost1, b.lost2} {
		for _, cs := range lost {
			out = append(out, cs...)
		}
	}
	slices.SortFunc(out, Conflict.Compare)
	return out
}

// Build brings the Builder to snap, as an Update with everything that
// differs from the previous call, and returns a State of the caller's own.
// It walks the whole snapshot; Update is for callers that know what
// changed.
func (b *Builder) Build(snap Snapshot) *State {
	b.init()
	ch := Changes{Services: map[NamespacedName]*Service{}, Slices: map[NamespacedName]*EndpointSlice{},
		ServiceCIDRs: snap.ServiceCIDRs, CIDRsChanged: true}
	if !b.node.equal(snap.Node) {
		ch.Node = &snap.Node
	}
	diffInto(ch.Services, b.services, snap.Services)
	diffInto(ch.Slices, b.slices, snap.Slices)
	st, _ := b.Update(ch)
	out := *st
	out.Services = maps.Clone(st.Services)
	out.byService = make(map[NamespacedName][]ServicePortKey, len(st.byService))
	for n, keys := range st.byService {
		out.byService[n] = slices.Clone(keys)
	}
	return &out
}

// diffInto records in ch every name whose value differs between had and
// now.
func diffInto[T any](ch, had, now map[NamespacedName]*T) {
	for n, v := range now {
		if had[n] != v {
			ch[n] = v
		}
	}
	for n := range had {
		if _, ok := now[n]; !ok {
			ch[n] = nil
		}
	}
}
