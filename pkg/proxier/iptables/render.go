package iptables

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Render returns the iptables-restore text (for --noflush) that programs s
// in full for family fam: the nat and filter tables' PROXYD-* chains. It is
// pure; the jump rules from the built-in chains are not part of it (the
// Proxier ensures them with single-rule commands, see jumpRules).
func Render(s *model.State, cfg proxier.Config, fam model.IPFamily) []byte {
	r := newRenderer(cfg, fam)
	var t restoreText
	r.fullState(&t, s.Sorted(), s.ServiceCIDRs, nil)
	return t.bytes()
}

// renderer renders the rules of one family under one Config.
type renderer struct {
	fam        model.IPFamily
	masqAll    bool
	cidr       string // "! -s" source for the masquerade rule; "" for none
	hostSuffix string // "/32" or "/128"
	mark       string
	markMask   string // mark/mark
	rejectWith string
	probs      []string // probs[n] is probability(n), cached
}

func newRenderer(cfg proxier.Config, fam model.IPFamily) *renderer {
	r := &renderer{
		fam:        fam,
		masqAll:    cfg.MasqueradeAll,
		hostSuffix: "/32",
		mark:       markString(cfg.Mark()),
		rejectWith: "icmp-port-unreachable",
	}
	r.markMask = r.mark + "/" + r.mark
	if fam == model.IPv6 {
		r.hostSuffix = "/128"
		r.rejectWith = "icmp6-port-unreachable"
	}
	if p, ok := cfg.ClusterCIDR(int(fam)); ok {
		r.cidr = p.Masked().String()
	}
	return r
}

func (r *renderer) prob(n int) string {
	for len(r.probs) <= n {
		r.probs = append(r.probs, probability(max(len(r.probs), 1)))
	}
	return r.probs[n]
}

// restoreText collects a restore input the way iptables-restore wants it:
// per table, every chain line first (which creates or, with --noflush,
// flushes the chain), then the rules, then the deletions.
type restoreText struct {
	natChains, natRules, natDelete       chunkBuf
	filterChains, filterRules, filterDel chunkBuf
	rules                                int // -A lines written
	chains                               int // chain lines written
	deleted                              int // -X lines written
}

func (t *restoreText) natChain(name string) { t.chainLine(&t.natChains, name) }

func (t *restoreText) filterChain(name string) { t.chainLine(&t.filterChains, name) }

func (t *restoreText) chainLine(b *chunkBuf, name string) {
	b.writeByte(':')
	b.writeString(name)
	b.writeString(" - [0:0]\n")
	t.chains++
}

// deleteChain flushes and deletes a chain proxyd no longer wants; the
// chain line flushes it, so the -X after every rule finds it empty.
func (t *restoreText) deleteChain(table, name string) {
	del := &t.natDelete
	if table == tableFilter {
		t.filterChain(name)
		del = &t.filterDel
	} else {
		t.natChain(name)
	}
	del.writeString("-X ")
	del.writeString(name)
	del.writeByte('\n')
	t.chains--
	t.deleted++
}

// empty reports whether nothing would be written.
func (t *restoreText) empty() bool { return t.chains == 0 && t.deleted == 0 }

// bytes is the restore input; a table with nothing to do is left out.
func (t *restoreText) bytes() []byte {
	out := make([]byte, 0, t.natChains.Len()+t.natRules.Len()+t.natDelete.Len()+
		t.filterChains.Len()+t.filterRules.Len()+t.filterDel.Len()+32)
	if t.filterChains.Len() > 0 {
		out = append(out, "*filter\n"...)
		out = t.filterChains.appendTo(out)
		out = t.filterRules.appendTo(out)
		out = t.filterDel.appendTo(out)
		out = append(out, "COMMIT\n"...)
	}
	if t.natChains.Len() > 0 {
		out = append(out, "*nat\n"...)
		out = t.natChains.appendTo(out)
		out = t.natRules.appendTo(out)
		out = t.natDelete.appendTo(out)
		out = append(out, "COMMIT\n"...)
	}
	return out
}

// rule appends "-A chain words..." to b.
func (t *restoreText) rule(b *chunkBuf, chain string, words ...string) {
	b.writeString("-A ")
	b.writeString(chain)
	for _, w := range words {
		b.writeByte(' ')
		b.writeString(w)
	}
	b.writeByte('\n')
	t.rules++
}

// chunkBuf is an append-only byte buffer made of fixed-size chunks, so
// that writing tens of megabytes never copies what was already written.
type chunkBuf struct {
	chunks [][]byte
	n      int
}

// Chunks start small, for the few lines of a partial write, and double up
// to maxChunk.
const (
	minChunk = 1 << 10
	maxChunk = 64 << 10
)

// last returns the chunk to append to, starting a new one when full.
func (c *chunkBuf) last() *[]byte {
	if len(c.chunks) == 0 {
		c.chunks = append(c.chunks, make([]byte, 0, minChunk))
	} else if l := c.chunks[len(c.chunks)-1]; len(l) == cap(l) {
		c.chunks = append(c.chunks, make([]byte, 0, min(2*cap(l), maxChunk)))
	}
	return &c.chunks[len(c.chunks)-1]
}

// writeString appends s.
func (c *chunkBuf) writeString(s string) {
	c.n += len(s)
	for len(s) > 0 {
		l := c.last()
		k := min(len(s), cap(*l)-len(*l))
		*l = append(*l, s[:k]...)
		s = s[k:]
	}
}

// writeByte appends b.
func (c *chunkBuf) writeByte(b byte) {
	l := c.last()
	*l = append(*l, b)
	c.n++
}

// Len is the number of bytes written.
func (c *chunkBuf) Len() int { return c.n }

func (c *chunkBuf) appendTo(out []byte) []byte {
	for _, ch := range c.chunks {
		out = append(out, ch...)
	}
	return out
}

// staleChains are PROXYD-* chains found in the kernel, per table, that a
// full write must delete unless it writes them again.
type staleChains map[string]map[string]bool

// base renders the chains every sync keeps: masquerade marking and the
// postrouting masquerade.
func (r *renderer) base(t *restoreText) {
	t.natChain(ChainPostrouting)
	t.natChain(ChainMarkMasq)
	t.rule(&t.natRules, ChainPostrouting, "-m", "mark", "!", "--mark", r.markMask, "-j", "RETURN")
	// Clear the bit so a packet that passes another proxy layer (or is
	// re-routed) is not masqueraded twice.
	t.rule(&t.natRules, ChainPostrouting, "-j", "MARK", "--xor-mark", r.mark)
	t.rule(&t.natRules, ChainPostrouting, "-m", "comment", "--comment", `"proxyd service traffic requiring SNAT"`, "-j", "MASQUERADE", "--random-fully")
	t.rule(&t.natRules, ChainMarkMasq, "-j", "MARK", "--or-mark", r.mark)
}

// services renders PROXYD-SERVICES of both tables in full and returns
// how many refusal rules it wrote (see refuse).
func (r *renderer) services(t *restoreText, sps []*model.ServicePort, cidrs []netip.Prefix) int {
	t.natChain(ChainServices)
	t.filterChain(ChainServices)
	for _, sp := range sps {
		r.dispatchTo(t, sp, true, true)
	}
	return r.refuse(t, sps, cidrs)
}

// refuse renders the end of filter's PROXYD-SERVICES: a REJECT for every
// ServiceCIDR of the family and for every ClusterIP outside them. Filter
// runs after nat, so a packet still addressed to one of these was not
// DNATed: it is for a port no service port has, or for an address no
// Service has. With the ServiceCIDRs known that is one rule per range, not
// one per ClusterIP; it returns how many rules it wrote.
func (r *renderer) refuse(t *restoreText, sps []*model.ServicePort, cidrs []netip.Prefix) int {
	n := 0
	var last netip.Addr
	var outside []netip.Addr
	for _, sp := range sps {
		if vip, ok := programmable(sp, r.fam); ok && vip != last && !inAny(cidrs, vip) {
			outside = append(outside, vip)
			last = vip
		}
	}
	slices.SortFunc(outside, netip.Addr.Compare)
	outside = slices.Compact(outside)
	for _, vip := range outside {
		t.rule(&t.filterRules, ChainServices, "-d", vip.String()+r.hostSuffix, "-m", "comment", "--comment", `"a port this ClusterIP does not serve"`,
			"-j", "REJECT", "--reject-with", r.rejectWith)
		n++
	}
	for _, c := range cidrs {
		if model.FamilyOf(c.Addr()) == r.fam {
			t.rule(&t.filterRules, ChainServices, "-d", c.String(), "-m", "comment", "--comment", `"an unallocated ClusterIP or a port its Service does not have"`,
				"-j", "REJECT", "--reject-with", r.rejectWith)
			n++
		}
	}
	return n
}

// familyCIDRs returns the prefixes of cidrs of family fam.
func familyCIDRs(cidrs []netip.Prefix, fam model.IPFamily) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range cidrs {
		if model.FamilyOf(c.Addr()) == fam {
			out = append(out, c)
		}
	}
	return out
}

func inAny(cidrs []netip.Prefix, a netip.Addr) bool {
	for _, c := range cidrs {
		if c.Contains(a) {
			return true
		}
	}
	return false
}

// dispatchTo renders sp's rule in PROXYD-SERVICES: a jump to its chain in
// nat, or a REJECT in filter when it has no endpoint of this family; only
// into the tables asked for.
func (r *renderer) dispatchTo(t *restoreText, sp *model.ServicePort, nat, filter bool) {
	vip, ok := programmable(sp, r.fam)
	if !ok {
		return
	}
	withEndpoints := hasEndpoints(sp, r.fam)
	if withEndpoints && !nat || !withEndpoints && !filter {
		return
	}
	proto := sp.Key.Protocol.Lower()
	dst := vip.String() + r.hostSuffix
	port := strconv.Itoa(int(sp.Port))
	name := portName(sp.Key)
	if withEndpoints {
		t.rule(&t.natRules, ChainServices, "-d", dst, "-p", proto, "-m", "comment", "--comment", quoteComment(name+" cluster IP"),
			"-m", proto, "--dport", port, "-j", svcChain(sp.Key))
		return
	}
	t.rule(&t.filterRules, ChainServices, "-d", dst, "-p", proto, "-m", "comment", "--comment", quoteComment(name+" has no endpoints"),
		"-m", proto, "--dport", port, "-j", "REJECT", "--reject-with", r.rejectWith)
}

// servicePort renders sp's own nat chains, its service chain and one chain
// per endpoint, and returns their names and how many rules they hold; none
// when sp has no ClusterIP or no endpoint of this family. Endpoint chains
// in unchanged are known to hold already what they would be written with,
// and are left alone.
func (r *renderer) servicePort(t *restoreText, sp *model.ServicePort, unchanged map[string]bool) ([]string, int) {
	vip, ok := programmable(sp, r.fam)
	if !ok {
		return nil, 0
	}
	eps := endpointsOf(sp.ClusterEndpoints, r.fam)
	if len(eps) == 0 {
		return nil, 0
	}
	before := t.rules
	svc := svcChain(sp.Key)
	chains := make([]string, 0, 1+len(eps))
	chains = append(chains, svc)
	t.natChain(svc)
	proto := sp.Key.Protocol.Lower()
	name := portName(sp.Key)
	clusterIP := quoteComment(name + " cluster IP")
	dst := vip.String() + r.hostSuffix
	port := strconv.Itoa(int(sp.Port))
	switch {
	case r.masqAll:
		t.rule(&t.natRules, svc, "-d", dst, "-p", proto, "-m", "comment", "--comment", clusterIP,
			"-m", proto, "--dport", port, "-j", ChainMarkMasq)
	case r.cidr != "":
		t.rule(&t.natRules, svc, "!", "-s", r.cidr, "-d", dst, "-p", proto, "-m", "comment", "--comment", clusterIP,
			"-m", proto, "--dport", port, "-j", ChainMarkMasq)
	}
	seps := make([]string, len(eps))
	for i, e := range eps {
		seps[i] = sepChain(sp.Key, e)
		if !unchanged[seps[i]] {
			t.natChain(seps[i])
		}
	}
	affinity := ""
	if sp.AffinitySeconds > 0 {
		affinity = strconv.Itoa(int(sp.AffinitySeconds))
		// A client seen recently goes back to the endpoint it used.
		for i, e := range eps {
			t.rule(&t.natRules, svc, "-m", "comment", "--comment", quoteComment(name+" -> "+e.String()),
				"-m", "recent", "--name", seps[i], "--rcheck", "--seconds", affinity, "--reap", "-j", seps[i])
		}
	}
	// Endpoint i of n is taken with probability 1/(n-i) given that none
	// before it was, which makes every endpoint equally likely.
	for i, e := range eps {
		comment := quoteComment(name + " -> " + e.String())
		if i < len(eps)-1 {
			t.rule(&t.natRules, svc, "-m", "comment", "--comment", comment,
				"-m", "statistic", "--mode", "random", "--probability", r.prob(len(eps)-i), "-j", seps[i])
		} else {
			t.rule(&t.natRules, svc, "-m", "comment", "--comment", comment, "-j", seps[i])
		}
	}
	sepComment := quoteComment(name)
	reused := 0
	for i, e := range eps {
		chains = append(chains, seps[i])
		if unchanged[seps[i]] {
			reused++
			continue
		}
		// Hairpin: an endpoint reaching itself through the VIP must see
		// the node as the source, or it would answer itself directly.
		t.rule(&t.natRules, seps[i], "-s", e.IP.String()+r.hostSuffix, "-m", "comment", "--comment", sepComment, "-j", ChainMarkMasq)
		to := netip.AddrPortFrom(e.IP, e.Port).String()
		if affinity != "" {
			t.rule(&t.natRules, seps[i], "-p", proto, "-m", "comment", "--comment", sepComment,
				"-m", "recent", "--name", seps[i], "--set", "-j", "DNAT", "--to-destination", to)
		} else {
			t.rule(&t.natRules, seps[i], "-p", proto, "-m", "comment", "--comment", sepComment, "-j", "DNAT", "--to-destination", to)
		}
	}
	return chains, t.rules - before + reused*sepRules
}

// sepRules is how many rules an endpoint chain holds: the hairpin mark
// and the DNAT.
const sepRules = 2

// endpointsOf is model.EndpointsOf without the copy when every endpoint
// is of family fam, as it is unless a Service is dual-stack.
func endpointsOf(eps []model.Endpoint, fam model.IPFamily) []model.Endpoint {
	for _, e := range eps {
		if model.FamilyOf(e.IP) != fam {
			return model.EndpointsOf(eps, fam)
		}
	}
	return eps
}

// hasEndpoints reports whether sp has a usable endpoint of family fam.
func hasEndpoints(sp *model.ServicePort, fam model.IPFamily) bool {
	for _, e := range sp.ClusterEndpoints {
		if model.FamilyOf(e.IP) == fam {
			return true
		}
	}
	return false
}
