package ipvs

import (
	"hash/fnv"
	"net/netip"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Tracer evaluates a rendered IPVS table and its netfilter side for the
// first packet of a new connection, in the kernel's order:
//
//  1. IPVS takes packets to a virtual server whose address is local (bound
//     to proxyd-ipvs0) — forwarded ones — or any locally originated packet
//     to it (IPVS hooks LOCAL_OUT too);
//  2. the scheduler picks a real server of weight > 0; with none, IPVS
//     answers ICMP port unreachable (Reject), persistent or not, forwarded
//     or from the node: what the VM test sees on a real kernel;
//  3. postrouting masquerades hairpin connections and those marked for
//     coming from outside the cluster CIDR (or all, with MasqueradeAll);
//  4. what IPVS did not take is rejected by reject-input/-output when it is
//     addressed to a ClusterIP (a port or protocol no virtual server has),
//     and by reject-output/-forward when it is addressed to the service
//     ranges; anything else is untouched.
//
// Each traced packet is a fresh connection on an idle table: for rr, wrr,
// lc, wlc, sed and nq every real server of equal weight is then equally
// likely, which rnd stands for (the kernel's round robin would rotate
// exactly). sh and mh hash the source address, dh the destination: the
// same packet always gets the same real server (with a hash of its own,
// not the kernel's). Persistence only matters for a client's second
// connection, which a stateless tracer does not see.
type Tracer struct {
	table *Table
	rules *Ruleset
	bound map[netip.Addr]bool
}

// NewTracer renders s the way Sync would and traces against that.
func NewTracer(s *model.State, cfg proxier.Config, scheduler string) (*Tracer, error) {
	sched, err := ValidateScheduler(scheduler)
	if err != nil {
		return nil, err
	}
	t := Render(s, sched)
	return TracerFor(t, RenderNetfilter(t, cfg)), nil
}

// TracerFor traces against an already rendered table and ruleset.
func TracerFor(t *Table, r *Ruleset) *Tracer {
	bound := map[netip.Addr]bool{}
	for _, a := range t.VIPs() {
		bound[a] = true
	}
	return &Tracer{table: t, rules: r, bound: bound}
}

// Trace implements flowspec.Tracer.
func (t *Tracer) Trace(p flowspec.Packet, rnd func(n uint32) uint32) flowspec.Result {
	dst := netip.AddrPortFrom(p.Dst.Addr().Unmap(), p.Dst.Port())
	src := p.Src.Unmap()
	tu := Tuple{Addr: dst.Addr(), Protocol: p.Proto, Port: dst.Port()}
	local := p.FromNode || t.bound[dst.Addr()]
	vs := t.table.Servers[VSKey(tu)]
	if vs == nil || !local {
		if t.bound[dst.Addr()] || t.rules.inServiceCIDR(dst.Addr()) {
			return flowspec.Result{Verdict: flowspec.Reject}
		}
		return flowspec.Result{Verdict: flowspec.Untouched}
	}
	rs, ok := schedule(vs, src, rnd)
	if !ok {
		return flowspec.Result{Verdict: flowspec.Reject}
	}
	masq := has(t.rules.ClusterIPs, tu) && t.rules.marks(src)
	if rs.Addr() == src {
		for _, h := range t.rules.Hairpin {
			if h.Endpoint == rs && h.Protocol == p.Proto {
				masq = true
			}
		}
	}
	return flowspec.Result{Verdict: flowspec.DNAT, Endpoint: rs, Masquerade: masq}
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
