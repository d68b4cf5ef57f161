package ipvs

import (
	"hash/fnv"
	"net/netip"
	"sync"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Tracer evaluates a rendered IPVS table and its netfilter side for the
// first packet of a new connection, in the kernel's order:
//
//  0. guard-prerouting/-output drop a new connection, forwarded or from
//     the node, before anything below rewrites the destination: to a
//     ClusterIP virtual server in InternalDrop (internalTrafficPolicy
//     Local, endpoints only on other nodes), and to a load-balancer virtual
//     server that loadBalancerSourceRanges guard when no range of it
//     admits the source;
//  1. nat prerouting/output mark traffic to a ClusterIP from outside the
//     cluster CIDR (or all, with MasqueradeAll) and all traffic to an
//     external virtual server of externalTrafficPolicy Cluster; for one of
//     policy Local, Pods and the node itself are DNATed to the ClusterIP
//     (marked when from the node), so they get the whole Service;
//  2. drop-input drops what is left for a Local virtual server without
//     local endpoints (forwarded packets only: the node's own never pass
//     input);
//  3. IPVS takes packets to a virtual server whose address is local (bound
//     to proxyd-ipvs0, or one of the node's addresses for a NodePort) —
//     forwarded ones — or any locally originated packet to it (IPVS hooks
//     LOCAL_OUT too);
//  4. the scheduler picks a real server of weight > 0; with none, IPVS
//     answers ICMP port unreachable (Reject), persistent or not, forwarded
//     or from the node: what the VM test sees on a real kernel;
//  5. postrouting masquerades hairpin connections and marked ones;
//  6. what IPVS did not take is rejected by reject-input/-output when it is
//     addressed to a ClusterIP (a port or protocol no virtual server has),
//     and by reject-output/-forward when it is addressed to the service
//     ranges; anything else is untouched.
//
// Each traced packet is a new connection: for rr, wrr, lc, wlc, sed and nq
// every real server of equal weight is then equally likely, which rnd
// stands for (the kernel's round robin would rotate exactly). sh and mh
// hash the source address, dh the destination: the same packet always gets
// the same real server (with a hash of its own, not the kernel's). A
// persistent virtual server remembers each client's real server, as IPVS's
// persistence templates do: later connections of that client go there as
// long as it still takes new connections (weight > 0; a drained or deleted
// one expires the template, as expire_quiescent_template=1 makes the kernel
// do). The tracer has no clock, so templates never time out. A Tracer is
// safe for concurrent use.
type Tracer struct {
	table   *Table
	rules   *Ruleset
	bound   map[netip.Addr]bool
	nodeIPs map[netip.Addr]bool

	mu        sync.Mutex
	templates map[template]netip.AddrPort
}

// template is an IPVS persistence template: client address to one
// virtual server (port-specific persistence, as proxyd programs it).
type template struct {
	vs     VSKey
	client netip.Addr
}

// NewTracer renders s the way Sync would and traces against that.
func NewTracer(s *model.State, cfg proxier.Config, scheduler string) (*Tracer, error) {
	sched, err := ValidateScheduler(scheduler)
	if err != nil {
		return nil, err
	}
	t := RenderWith(s, sched, cfg)
	return TracerFor(t, RenderNetfilter(t, cfg)), nil
}

// TracerFor traces against an already rendered table and ruleset.
func TracerFor(t *Table, r *Ruleset) *Tracer {
	bound := map[netip.Addr]bool{}
	for _, a := range t.VIPs() {
		bound[a] = true
	}
	nodeIPs := map[netip.Addr]bool{}
	for _, a := range t.NodeIPs {
		nodeIPs[a] = true
	}
	return &Tracer{table: t, rules: r, bound: bound, nodeIPs: nodeIPs, templates: map[template]netip.AddrPort{}}
}

// Trace implements flowspec.Tracer.
func (t *Tracer) Trace(p flowspec.Packet, rnd func(n uint32) uint32) flowspec.Result {
	dst := netip.AddrPortFrom(p.Dst.Addr().Unmap(), p.Dst.Port())
	src := p.Src.Unmap()
	tu := Tuple{Addr: dst.Addr(), Protocol: p.Proto, Port: dst.Port()}
	// filter prerouting / output at -110: the source-range guard.
	if has(t.rules.InternalDrop, tu) || t.rules.guardDrops(tu, src) {
		return flowspec.Result{Verdict: flowspec.Drop}
	}
	// nat prerouting / output: mark-masq, then external-local.
	masq := (has(t.rules.ClusterIPs, tu) && t.rules.marks(src)) || has(t.rules.ExternalMasq, tu)
	srcLocal := p.FromNode || t.nodeIPs[src] || t.bound[src] || src.IsLoopback()
	if to, ok := t.rules.shortCircuit(tu); ok {
		cidr := t.rules.clusterCIDR(src)
		switch {
		case srcLocal:
			masq = true
		case cidr.IsValid() && cidr.Contains(src):
			masq = masq || t.rules.MasqueradeAll
		default:
			ok = false
		}
		if ok {
			dst = to
			tu = Tuple{Addr: dst.Addr(), Protocol: p.Proto, Port: dst.Port()}
		}
	}
	if !p.FromNode && has(t.rules.ExternalDrop, tu) {
		return flowspec.Result{Verdict: flowspec.Drop}
	}
	local := p.FromNode || t.bound[dst.Addr()] || t.nodeIPs[dst.Addr()]
	vs := t.table.Servers[VSKey(tu)]
	if vs == nil || !local {
		if t.bound[dst.Addr()] || t.rules.inServiceCIDR(dst.Addr()) {
			return flowspec.Result{Verdict: flowspec.Reject}
		}
		return flowspec.Result{Verdict: flowspec.Untouched}
	}
	rs, ok := t.schedule(vs, src, rnd)
	if !ok {
		return flowspec.Result{Verdict: flowspec.Reject}
	}
	if rs.Addr() == src {
		for _, h := range t.rules.Hairpin {
			if h.Endpoint == rs && h.Protocol == p.Proto {
				masq = true
			}
		}
	}
	return flowspec.Result{Verdict: flowspec.DNAT, Endpoint: rs, Masquerade: masq}
}

// schedule picks vs's real server for a new connection from src: the
// client's persistence template's when vs is persistent and the template's
// real server still takes connections, else what the scheduler picks
// (which a persistent vs then remembers).
func (t *Tracer) schedule(vs *VirtualServer, src netip.Addr, rnd func(n uint32) uint32) (netip.AddrPort, bool) {
	if !vs.Persistent() {
		return schedule(vs, src, rnd)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	k := template{vs: vs.VSKey, client: src}
	if prev, ok := t.templates[k]; ok {
		for _, rs := range vs.RealServers {
			if rs.Addr == prev && rs.Weight > 0 {
				return prev, true
			}
		}
		delete(t.templates, k)
	}
	rs, ok := schedule(vs, src, rnd)
	if ok {
		t.templates[k] = rs
	}
	return rs, ok
}

// schedule picks a real server of weight > 0 the way vs's scheduler would
// for a new connection on an idle table.
func schedule(vs *VirtualServer, src netip.Addr, rnd func(n uint32) uint32) (netip.AddrPort, bool) {
	var alive []RealServer
	total := 0
	for _, rs := range vs.RealServers {
		if rs.Weight > 0 {
			alive = append(alive, rs)
			total += rs.Weight
		}
	}
	if len(alive) == 0 {
		return netip.AddrPort{}, false
	}
	switch vs.Scheduler {
	case "sh", "mh":
		return alive[hashAddr(src, vs.Scheduler)%uint32(len(alive))].Addr, true
	case "dh":
		return alive[hashAddr(vs.Addr, vs.Scheduler)%uint32(len(alive))].Addr, true
	}
	n := int(rnd(uint32(total)))
	for _, rs := range alive {
		if n < rs.Weight {
			return rs.Addr, true
		}
		n -= rs.Weight
	}
	return alive[len(alive)-1].Addr, true
}

func hashAddr(a netip.Addr, salt string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(salt))
	h.Write(a.AsSlice())
	return h.Sum32()
}
