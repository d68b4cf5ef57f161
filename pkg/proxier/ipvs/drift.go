package ipvs

import (
	"fmt"
	"slices"

	"github.com/proxyd/proxyd/pkg/nft"
)

// Drift compares what the kernel holds (ks, from Kernel.Read) with what
// proxyd means to program (want and rules, rendered from its last State)
// and describes each difference: a virtual server missing, scheduled or
// persistent otherwise, or proxyd's without being wanted; a real server
// missing, extra or of another weight; an address missing from
// proxyd-ipvs0 or left on it; and the proxyd-ipvs table's differences
// (nft.Drift). A real server of weight 0 that proxyd does not want is one
// it drains until its connections end, not drift. Nothing means no drift.
func Drift(ks *KernelState, want *Table, rules *Ruleset) []string {
	var out []string
	for _, w := range want.Sorted() {
		h := ks.Table.Servers[w.VSKey]
		if h == nil {
			out = append(out, fmt.Sprintf("virtual server %s is missing", w.VSKey))
			continue
		}
		if h.Scheduler != w.Scheduler {
			out = append(out, fmt.Sprintf("virtual server %s has scheduler %s, want %s", w.VSKey, h.Scheduler, w.Scheduler))
		}
		if h.Timeout != w.Timeout {
			out = append(out, fmt.Sprintf("virtual server %s has %s, want %s", w.VSKey, persistence(h.Timeout), persistence(w.Timeout)))
		}
		out = append(out, realServerDrift(w.VSKey, h.RealServers, w.RealServers)...)
	}
	for _, h := range ks.Table.Sorted() {
		if ks.Owned[h.VSKey] && want.Servers[h.VSKey] == nil {
			out = append(out, fmt.Sprintf("virtual server %s is proxyd's (its address is on %s, or it is recorded as a node server), but not meant to be there", h.VSKey, LinkName))
		}
	}
	wantBound := want.VIPs()
	for _, a := range wantBound {
		if !slices.Contains(ks.Bound, a) {
			out = append(out, fmt.Sprintf("address %s is not bound to %s: the node does not take connections to it", a, LinkName))
		}
	}
	for _, a := range ks.Bound {
		if !slices.Contains(wantBound, a) {
			out = append(out, fmt.Sprintf("address %s is bound to %s, but no virtual server of proxyd's uses it", a, LinkName))
		}
	}
	for _, d := range nft.Drift(ks.NFT, rules.Table()) {
		out = append(out, "inet "+TableName+": "+d)
	}
	return out
}

func persistence(timeout uint32) string {
	if timeout == 0 {
		return "no persistence"
	}
	return fmt.Sprintf("persistence %d s", timeout)
}

func realServerDrift(vs VSKey, have, want []RealServer) []string {
	var out []string
	weight := func(list []RealServer, rs RealServer) (int, bool) {
		i := slices.IndexFunc(list, func(r RealServer) bool { return r.Addr == rs.Addr })
		if i < 0 {
			return 0, false
		}
		return list[i].Weight, true
	}
	for _, w := range want {
		switch hw, ok := weight(have, w); {
		case !ok:
			out = append(out, fmt.Sprintf("real server %s of %s is missing", w.Addr, vs))
		case hw != w.Weight:
			out = append(out, fmt.Sprintf("real server %s of %s has weight %d, want %d", w.Addr, vs, hw, w.Weight))
		}
	}
	for _, h := range have {
		if _, ok := weight(want, h); !ok && h.Weight > 0 {
			out = append(out, fmt.Sprintf("real server %s of %s (weight %d) is not meant to be there", h.Addr, vs, h.Weight))
		}
	}
	return out
}
