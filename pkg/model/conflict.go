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

// claim is one service port's claim on one destination.
type claim struct {
	kind    ClaimKind
	created time.Time
	port    *ServicePort
}

// beats reports whether a wins over b under the Conflict rule.
func (a claim) beats(b claim) bool {
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	if c := a.created.Compare(b.created); c != 0 {
		return c < 0
	}
	return a.port.Key.Compare(b.port.Key) < 0
}

// contest collects claims and names, per destination, the one that wins.
type contest struct {
	winners map[Destination]claim
	losers  map[Destination][]claim
}

func newContest(n int) *contest {
	return &contest{winners: make(map[Destination]claim, n), losers: map[Destination][]claim{}}
}

func (c *contest) add(d Destination, cl claim) {
	w, ok := c.winners[d]
	switch {
	case !ok:
		c.winners[d] = cl
	case cl.beats(w):
		c.winners[d] = cl
		c.losers[d] = append(c.losers[d], w)
	default:
		c.losers[d] = append(c.losers[d], cl)
	}
}

// conflicts lists every lost claim with the destination's final winner.
func (c *contest) conflicts() []Conflict {
	var out []Conflict
	for d, ls := range c.losers {
		w := c.winners[d]
		for _, l := range ls {
			out = append(out, Conflict{Destination: d, Loser: l.port.Key, LoserKind: l.kind, Winner: w.port.Key, WinnerKind: w.kind})
		}
	}
	return out
}

// resolve settles every conflict among ports, the service ports of all
// Services as buildService made them. created gives a Service's
// creationTimestamp; rebuild makes a port again with fewer ClusterIPs (nil
// when none is left). It returns the ports to program, each destination
// claimed by exactly one, and the conflicts, sorted.
func resolve(ports []*ServicePort, created func(NamespacedName) time.Time,
	rebuild func(*ServicePort, []netip.Addr) *ServicePort) ([]*ServicePort, []Conflict) {
	// First ClusterIPs among themselves: what a port keeps of them
	// decides which families it serves at all.
	first := newContest(len(ports))
	for _, sp := range ports {
		t := created(sp.Key.Service())
		for _, ip := range sp.ClusterIPs {
			first.add(Destination{Protocol: sp.Key.Protocol, Addr: netip.AddrPortFrom(ip, sp.Port)}, claim{ClusterIPClaim, t, sp})
		}
	}
	conflicts := first.conflicts()
	lostIPs := map[*ServicePort][]netip.Addr{}
	for d, ls := range first.losers {
		for _, l := range ls {
			lostIPs[l.port] = append(lostIPs[l.port], d.Addr.Addr())
		}
	}
	kept := ports[:0:0]
	for _, sp := range ports {
		if lost, ok := lostIPs[sp]; ok {
			left := slices.DeleteFunc(slices.Clone(sp.ClusterIPs), func(ip netip.Addr) bool { return slices.Contains(lost, ip) })
			if sp = rebuild(sp, left); sp == nil {
				continue
			}
		}
		kept = append(kept, sp)
	}

	// Then every destination the remaining ports claim.
	second := newContest(2 * len(kept))
	for _, sp := range kept {
		t := created(sp.Key.Service())
		for _, c := range claims(sp) {
			second.add(c.dest, claim{c.kind, t, sp})
		}
	}
	conflicts = append(conflicts, second.conflicts()...)
	lost := map[*ServicePort][]destClaim{}
	for d, ls := range second.losers {
		for _, l := range ls {
			lost[l.port] = append(lost[l.port], destClaim{d, l.kind})
		}
	}
	for i, sp := range kept {
		if ds, ok := lost[sp]; ok {
			kept[i] = without(sp, ds)
		}
	}
	slices.SortFunc(conflicts, Conflict.Compare)
	return kept, conflicts
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
