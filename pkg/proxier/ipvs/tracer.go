package ipvs

import (
	"fmt"
	"hash/fnv"
	"net/netip"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Tracer traces the first packet of a new connection through the
// proxyd-ipvs nftables table and the IPVS table the way the kernel runs
// them: pkg/nft's tracer walks the hooks and runs the table's base chains
// by their priority, and the IPVS table is a pseudo-chain where IPVS
// schedules new connections (ip_vs_core.c): LOCAL_IN at 99 for packets
// addressed to the node (a VIP bound to proxyd-ipvs0 or a node address),
// LOCAL_OUT at -98 for the node's own. What it schedules it sends on
// itself, through output and postrouting, where the table masquerades; a
// virtual server without a real server of weight > 0 answers ICMP port
// unreachable (Reject), persistent or not, forwarded or from the node:
// what the VM test sees on a real kernel.
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
	t *nft.Tracer
}

// IPVS's hook priorities for new connections: NF_IP_PRI_NAT_SRC - 1 at
// LOCAL_IN and NF_IP_PRI_NAT_DST + 2 at LOCAL_OUT. (Its reply hooks, at 98
// and -99, see only replies.)
const (
	ipvsInputPriority  = 99
	ipvsOutputPriority = -98
)

// NewTracer renders s the way Sync would and traces against that.
func NewTracer(s *model.State, cfg proxier.Config, scheduler string) (*Tracer, error) {
	sched, err := ValidateScheduler(scheduler)
	if err != nil {
		return nil, err
	}
	t := RenderWith(s, sched, cfg)
	return TracerFor(t, RenderNetfilter(t, cfg)), nil
}

// TracerFor traces against an already rendered IPVS table and ruleset.
func TracerFor(t *Table, r *Ruleset) *Tracer { return TracerOver(t, r.Table()) }

// TracerOver traces against the IPVS table t and an nftables table nt —
// rendered, or read back from the kernel. The node's addresses are t's
// VIPs and NodeIPs.
func TracerOver(t *Table, nt *nft.Table) *Tracer {
	local := map[netip.Addr]bool{}
	for _, a := range t.VIPs() {
		local[a] = true
	}
	for _, a := range t.NodeIPs {
		local[a] = true
	}
	return KernelTracer(t, nt, func(a netip.Addr) bool { return local[a.Unmap()] || a.IsLoopback() }, nil)
}

// KernelTracer traces against what a kernel holds: its IPVS table t, its
// proxyd-ipvs table nt (nil: none), local telling the node's addresses
// (the VIPs bound to proxyd-ipvs0 among them) and IPVS's persistence
// templates, which a persistent virtual server follows for their clients
// as IPVS does.
func KernelTracer(t *Table, nt *nft.Table, local func(netip.Addr) bool, templates []Template) *Tracer {
	v := &ipvsHook{t: t, templates: map[string]netip.AddrPort{}}
	for _, tp := range templates {
		v.templates[templateKey(tp.VS, tp.Client)] = tp.RealServer
	}
	var tables []*nft.Table
	if nt != nil {
		tables = append(tables, nt)
	}
	return &Tracer{t: nft.NewTracer(local, tables,
		nft.Pseudo{Name: "ipvs", Hook: nft.Input, Priority: ipvsInputPriority, Run: v.run},
		nft.Pseudo{Name: "ipvs", Hook: nft.Output, Priority: ipvsOutputPriority, Run: v.run})}
}

// Trace implements flowspec.Tracer.
func (t *Tracer) Trace(p flowspec.Packet, rnd func(n uint32) uint32) flowspec.Result {
	return flowspec.NFT{T: t.t}.Trace(p, rnd)
}

// NFT is the underlying tracer: paths and enumerated choices.
func (t *Tracer) NFT() *nft.Tracer { return t.t }

// ipvsHook is the IPVS table as a pseudo-chain; templates are the
// kernel's persistence templates by templateKey.
type ipvsHook struct {
	t         *Table
	templates map[string]netip.AddrPort
}

// templateKey names a client's persistence template of a virtual server.
func templateKey(vs VSKey, client netip.Addr) string {
	return fmt.Sprintf("ipvs template %s %s", vs, client)
}

func (v *ipvsHook) run(fl *nft.Flow) (bool, error) {
	proto, ok := model.ProtocolOf(fl.Proto)
	if !ok {
		return false, nil
	}
	vs := v.t.Servers[VSKey{Addr: fl.Dst.Addr().Unmap(), Protocol: proto, Port: fl.Dst.Port()}]
	if vs == nil {
		return false, nil
	}
	rs, ok := v.schedulePersistent(fl, vs)
	if !ok {
		fl.Note("ipvs", "%s has no real server that takes new connections: ICMP port unreachable", vs.VSKey)
		fl.Reject()
		return false, nil
	}
	fl.Note("ipvs", "%s %s scheduled %s", vs.VSKey, vs.Scheduler, rs)
	fl.Redirect(rs)
	return true, nil
}

// schedulePersistent picks vs's real server for a new connection: the
// client's persistence template's (one a trace made, or else the
// kernel's) when vs is persistent and the template's real server still
// takes connections, else what the scheduler picks (which a persistent vs
// then remembers).
func (v *ipvsHook) schedulePersistent(fl *nft.Flow, vs *VirtualServer) (netip.AddrPort, bool) {
	if !vs.Persistent() {
		return schedule(vs, fl.Src, fl.Choose)
	}
	key := templateKey(vs.VSKey, fl.Src)
	prev, ok := fl.Recall(key)
	if !ok {
		prev, ok = v.templates[key]
	}
	if ok {
		for _, rs := range vs.RealServers {
			if rs.Addr == prev && rs.Weight > 0 {
				return rs.Addr, true
			}
		}
		fl.Forget(key)
	}
	rs, ok := schedule(vs, fl.Src, fl.Choose)
	if ok {
		fl.Remember(key, rs)
	}
	return rs, ok
}

// schedule picks a real server of weight > 0 the way vs's scheduler would
// for a new connection on an idle table; choose(n, cuts...) draws the
// random number, cut where the real servers' weights end.
func schedule(vs *VirtualServer, src netip.Addr, choose func(n uint32, cuts ...uint32) uint32) (netip.AddrPort, bool) {
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
	var cuts []uint32
	sum := 0
	for _, rs := range alive {
		sum += rs.Weight
		cuts = append(cuts, uint32(sum))
	}
	n := int(choose(uint32(total), cuts...))
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
