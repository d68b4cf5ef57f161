package model

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// ClaimKind says how a service port claims a destination. When several
// service ports claim one, the strongest kind wins; see Conflict.
type ClaimKind uint8

// Claim kinds, strongest first.
const (
	// ClusterIPClaim: a ClusterIP at the port. The apiserver allocates
	// ClusterIPs, so an address a Service was given beats one it named.
	ClusterIPClaim ClaimKind = iota
	// LoadBalancerIPClaim: a VIP-mode load-balancer ingress address, which
	// only the load-balancer controller writes (into the status).
	LoadBalancerIPClaim
	// ExternalIPClaim: an address of spec.externalIPs, which anyone who may
	// write a Service can name.
	ExternalIPClaim
	// NodePortClaim: the NodePort on every node address. It is claimed by
	// number and protocol in all families at once, as the apiserver
	// allocates it; its Destination has no address.
	NodePortClaim
)

func (k ClaimKind) String() string {
	switch k {
	case ClusterIPClaim:
		return "clusterIP"
	case LoadBalancerIPClaim:
		return "loadBalancerIP"
	case ExternalIPClaim:
		return "externalIP"
	}
	return "nodePort"
}

// Conflict is one destination (address, port and protocol, or a NodePort
// and protocol) that two service ports claimed. The rule, the same for
// every mode: the stronger ClaimKind wins (ClusterIP, then load-balancer
// IP, then external IP); between equal kinds the older Service wins
// (creationTimestamp, then namespace/name, then the port's name). The
// loser keeps everything else: only the contested part is left out of its
// ServicePort. A ClusterIP lost to another ClusterIP takes that family of
// the port with it (a port cannot be reached by external traffic of a
// family it has no ClusterIP of); a port left without any ClusterIP is
// left out entirely.
type Conflict struct {
	Destination Destination
	Loser       ServicePortKey
	LoserKind   ClaimKind
	Winner      ServicePortKey
	WinnerKind  ClaimKind
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s loses %s %s to %s (%s)", c.Loser, c.LoserKind, c.destination(), c.Winner, c.WinnerKind)
}

// destination prints the contested destination, a NodePort as "nodePort 30080/TCP".
func (c Conflict) destination() string {
	if c.LoserKind == NodePortClaim {
		return fmt.Sprintf("%d/%s", c.Destination.Addr.Port(), c.Destination.Protocol)
	}
	return fmt.Sprintf("%s/%s", c.Destination.Addr, c.Destination.Protocol)
}

// Compare orders conflicts by loser, then destination.
func (c Conflict) Compare(o Conflict) int {
	if d := c.Loser.Compare(o.Loser); d != 0 {
		return d
	}
	if d := c.Destination.Compare(o.Destination); d != 0 {
		return d
	}
	return c.Winner.Compare(o.Winner)
}

// claimant is one service port's claim on one destination.
type claimant struct {
	key     ServicePortKey
	kind    ClaimKind
	created time.Time // the Service's creationTimestamp
}

// beats reports whether a wins over b under the Conflict rule.
func (a claimant) beats(b claimant) bool {
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	if c := a.created.Compare(b.created); c != 0 {
		return c < 0
	}
	if c := a.key.Compare(b.key); c != 0 {
		return c < 0
	}
	return false
}

// contests indexes claims by destination, so that the winner of one is
// found without looking at any other: what a change costs follows the
// destinations it touches, not the cluster. Nearly every destination has
// one claimant, kept in the map's value without an allocation of its own.
type contests map[Destination]claimSet

// claimSet is the claimants of one destination: first, then more.
type claimSet struct {
	first claimant
	more  []claimant
}

// all returns the claimants.
func (s claimSet) all() []claimant {
	return append([]claimant{s.first}, s.more...)
}

func (c contests) add(d Destination, cl claimant) {
	s, ok := c[d]
	if !ok {
		c[d] = claimSet{first: cl}
		return
	}
	s.more = append(s.more, cl)
	c[d] = s
}

// remove takes back key's claim of kind on d.
func (c contests) remove(d Destination, key ServicePortKey, kind ClaimKind) {
	s, ok := c[d]
	if !ok {
		return
	}
	if s.first.key == key && s.first.kind == kind {
		if len(s.more) == 0 {
			delete(c, d)
			return
		}
		s.first = s.more[len(s.more)-1]
		s.more = s.more[:len(s.more)-1]
	} else {
		s.more = slices.DeleteFunc(s.more, func(cl claimant) bool { return cl.key == key && cl.kind == kind })
	}
	if len(s.more) == 0 {
		s.more = nil
	}
	c[d] = s
}

// holds reports whether key's claim of kind wins d.
func (c contests) holds(d Destination, key ServicePortKey, kind ClaimKind) bool {
	w, ok := c.winner(d)
	return ok && w.key == key && w.kind == kind
}

func (c contests) winner(d Destination) (claimant, bool) {
	s, ok := c[d]
	if !ok {
		return claimant{}, false
	}
	w := s.first
	for _, cl := range s.more {
		if cl.beats(w) {
			w = cl
		}
	}
	return w, true
}

// conflicts lists every claim on d that loses, with d's winner.
func (c contests) conflicts(d Destination) []Conflict {
	s, ok := c[d]
	if !ok || len(s.more) == 0 {
		return nil
	}
	w, _ := c.winner(d)
	var out []Conflict
	for _, cl := range s.all() {
		if cl != w {
			out = append(out, Conflict{Destination: d, Loser: cl.key, LoserKind: cl.kind, Winner: w.key, WinnerKind: w.kind})
		}
	}
	return out
}

type destClaim struct {
	dest Destination
	kind ClaimKind
}

// claims lists every destination sp claims, each once: its ClusterIPs,
// load-balancer and external IPs at its port, and its NodePort.
func claims(sp *ServicePort) []destClaim {
	out := make([]destClaim, 0, len(sp.ClusterIPs)*2+len(sp.ExternalIPs))
	at := func(ip netip.Addr, port uint16) Destination {
		return Destination{Protocol: sp.Key.Protocol, Addr: netip.AddrPortFrom(ip, port)}
	}
	for _, ip := range sp.ClusterIPs {
		out = append(out, destClaim{at(ip, sp.Port), ClusterIPClaim})
	}
	for _, ip := range sp.ExternalIPs {
		kind := ExternalIPClaim
		if slices.Contains(sp.LoadBalancerIPs, ip) {
			kind = LoadBalancerIPClaim
		}
		out = append(out, destClaim{at(ip, sp.Port), kind})
	}
	if sp.NodePort != 0 {
		out = append(out, destClaim{at(netip.Addr{}, sp.NodePort), NodePortClaim})
	}
	return out
}

// otherClaims are the claims of sp other than its ClusterIPs.
func otherClaims(sp *ServicePort) []destClaim {
	all := claims(sp)
	return slices.DeleteFunc(all, func(c destClaim) bool { return c.kind == ClusterIPClaim })
}

// without returns a copy of sp without the claims it lost.
func without(sp *ServicePort, lost []destClaim) *ServicePort {
	out := *sp
	for _, c := range lost {
		switch c.kind {
		case NodePortClaim:
			out.NodePort = 0
		case LoadBalancerIPClaim, ExternalIPClaim:
			ip := c.dest.Addr.Addr()
			out.ExternalIPs = slices.DeleteFunc(slices.Clone(out.ExternalIPs), func(a netip.Addr) bool { return a == ip })
			out.LoadBalancerIPs = slices.DeleteFunc(slices.Clone(out.LoadBalancerIPs), func(a netip.Addr) bool { return a == ip })
		}
	}
	if len(out.ExternalIPs) == 0 {
		out.ExternalIPs = nil
	}
	if len(out.LoadBalancerIPs) == 0 {
		out.LoadBalancerIPs = nil
	}
	if !out.HasExternal() {
		out.ExternalEndpoints = nil
	}
	return &out
}
