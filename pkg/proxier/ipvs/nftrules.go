package ipvs

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// This file is the one place the proxyd-ipvs nftables table is described:
// every rule carries its nft text (for String and golden tests) next to the
// expressions the kernel gets, so a reader can map one onto the other.

type chainSpec struct {
	name, kind, hook, priorityText string
	hooknum                        *nftables.ChainHook
	priority                       *nftables.ChainPriority
}

// chains: marking runs in nat prerouting/output, before IPVS sees the
// packet (IPVS hooks LOCAL_IN at priority 99 and LOCAL_OUT at -98);
// masquerade in nat postrouting, after IPVS rewrote the destination. The
// reject chains run where IPVS has already taken what it serves: input at
// 110 (IPVS steals its packets at 99), output at -90 (IPVS rewrites at -98),
// so any new connection still addressed to a ClusterIP there is one IPVS
// has no virtual server for; forward sees only addresses that are not
// local, i.e. no ClusterIP, so an address of the service ranges there is an
// unallocated one. external-local, jumped from prerouting and output,
// DNATs Pods and the node from an externalTrafficPolicy Local address to
// its ClusterIP before IPVS looks; drop-input then runs before IPVS's
// LOCAL_IN hook (priority 99) and drops what is left for a Local virtual
// server without local endpoints, which IPVS would otherwise refuse.
// guard-prerouting and guard-output drop new connections to a ClusterIP
// of internalTrafficPolicy Local served only by other nodes (which IPVS
// would refuse), and to a load-balancer IP from outside its
// loadBalancerSourceRanges, at priority -110 (as kube-proxy's nftables
// mode does, "dstnat - 10"): after
// conntrack (-200) and before everything else here — the nat chains
// (-100), whose external-local DNAT would hide the address, and IPVS (its
// LOCAL_OUT hook at -98, LOCAL_IN at 99) — for forwarded packets and the
// node's own alike.
var chains = []chainSpec{
	{name: "prerouting", kind: "nat", hook: "prerouting", priorityText: "dstnat", hooknum: nftables.ChainHookPrerouting, priority: nftables.ChainPriorityNATDest},
	{name: "output", kind: "nat", hook: "output", priorityText: "-100", hooknum: nftables.ChainHookOutput, priority: nftables.ChainPriorityNATDest},
	{name: "mark-masq"},
	{name: "external-local"},
	{name: "postrouting", kind: "nat", hook: "postrouting", priorityText: "srcnat", hooknum: nftables.ChainHookPostrouting, priority: nftables.ChainPriorityNATSource},
	{name: "reject-input", kind: "filter", hook: "input", priorityText: "110", hooknum: nftables.ChainHookInput, priority: nftables.ChainPriorityRef(110)},
	{name: "reject-output", kind: "filter", hook: "output", priorityText: "-90", hooknum: nftables.ChainHookOutput, priority: nftables.ChainPriorityRef(-90)},
	{name: "reject-forward", kind: "filter", hook: "forward", priorityText: "-110", hooknum: nftables.ChainHookForward, priority: nftables.ChainPriorityRef(-110)},
	{name: "drop-input", kind: "filter", hook: "input", priorityText: "filter", hooknum: nftables.ChainHookInput, priority: nftables.ChainPriorityRef(0)},
	{name: "guard-prerouting", kind: "filter", hook: "prerouting", priorityText: "dstnat - 10", hooknum: nftables.ChainHookPrerouting, priority: nftables.ChainPriorityRef(-110)},
	{name: "guard-output", kind: "filter", hook: "output", priorityText: "-110", hooknum: nftables.ChainHookOutput, priority: nftables.ChainPriorityRef(-110)},
}

type setElem struct {
	text   string
	key    []byte
	keyEnd []byte // the last key of a range, in an interval set
}

type setSpec struct {
	name     string
	keyType  nftables.SetDatatype
	interval bool
	elements []setElem
}

type ruleSpec struct {
	chain string
	text  string
	exprs []expr.Any
}

type family struct {
	suffix, ip string
	nfproto    byte
	saddr      uint32 // network header offsets
	daddr      uint32
	addrLen    uint32
	addrType   nftables.SetDatatype
	is4        bool
}

var families = []family{
	{suffix: "v4", ip: "ip", nfproto: unix.NFPROTO_IPV4, saddr: 12, daddr: 16, addrLen: 4, addrType: nftables.TypeIPAddr, is4: true},
	{suffix: "v6", ip: "ip6", nfproto: unix.NFPROTO_IPV6, saddr: 8, daddr: 24, addrLen: 16, addrType: nftables.TypeIP6Addr},
}

// concat joins key parts the way nftables stores a concatenation: each
// part padded to a multiple of 4 bytes.
func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
		if pad := len(p) % 4; pad != 0 {
			out = append(out, make([]byte, 4-pad)...)
		}
	}
	return out
}

func port(p uint16) []byte { return binaryutil.BigEndian.PutUint16(p) }

func concatType(types ...nftables.SetDatatype) nftables.SetDatatype {
	t, err := nftables.ConcatSetType(types...)
	if err != nil { // only for more than five types: a bug here, not input
		return nftables.TypeInvalid
	}
	return t
}

func (r *Ruleset) sets() []setSpec {
	var out []setSpec
	for _, f := range families {
		svcType := concatType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService)
		tupleSet := func(name string, list []Tuple) setSpec {
			s := setSpec{name: name + "-" + f.suffix, keyType: svcType}
			for _, t := range list {
				if t.Addr.Is4() != f.is4 {
					continue
				}
				s.elements = append(s.elements, setElem{
					text: fmt.Sprintf("%s . %s . %d", t.Addr, t.Protocol.Lower(), t.Port),
					key:  concat(t.Addr.AsSlice(), []byte{byte(protoNumber(t.Protocol))}, port(t.Port)),
				})
			}
			return s
		}
		vips := setSpec{name: "cluster-vips-" + f.suffix, keyType: f.addrType}
		for _, a := range r.vips() {
			if a.Is4() == f.is4 {
				vips.elements = append(vips.elements, setElem{text: a.String(), key: a.AsSlice()})
			}
		}
		out = append(out, tupleSet("cluster-ips", r.ClusterIPs), vips,
			tupleSet("external-masq", r.ExternalMasq), tupleSet("external-drop", r.ExternalDrop),
			tupleSet(nodeServersSet, r.NodeServers))
		hp := setSpec{name: "hairpin-" + f.suffix, keyType: concatType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService, f.addrType)}
		for _, h := range r.Hairpin {
			a := h.Endpoint.Addr()
			if a.Is4() != f.is4 {
				continue
			}
			hp.elements = append(hp.elements, setElem{
				text: fmt.Sprintf("%s . %s . %d . %s", a, h.Protocol.Lower(), h.Endpoint.Port(), a),
				key:  concat(a.AsSlice(), []byte{byte(protoNumber(h.Protocol))}, port(h.Endpoint.Port()), a.AsSlice()),
			})
		}
		out = append(out, hp)
		var guarded []Tuple
		sources := setSpec{name: "lb-sources-" + f.suffix, keyType: concatType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService, f.addrType), interval: true}
		for _, g := range r.SourceGuards {
			if g.LB.Addr.Is4() != f.is4 {
				continue
			}
			guarded = append(guarded, g.LB)
			lb := concat(g.LB.Addr.AsSlice(), []byte{byte(protoNumber(g.LB.Protocol))}, port(g.LB.Port))
			for _, p := range g.Sources {
				text := p.String()
				if p.IsSingleIP() {
					text = p.Addr().String()
				}
				sources.elements = append(sources.elements, setElem{
					text:   fmt.Sprintf("%s . %s . %d . %s", g.LB.Addr, g.LB.Protocol.Lower(), g.LB.Port, text),
					key:    concat(lb, p.Addr().AsSlice()),
					keyEnd: concat(lb, lastAddr(p).AsSlice()),
				})
			}
		}
		out = append(out, tupleSet("lb-guarded", guarded), sources, tupleSet(internalDropSet, r.InternalDrop))
	}
	return out
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// internalDropSet (with the family suffix) holds Ruleset.InternalDrop.
const internalDropSet = "internal-drop"

// nodeServersSet (with the family suffix) records the virtual servers on
// the node's own addresses; see Ruleset.NodeServers.
const nodeServersSet = "node-servers"

// parseTuple reads back a key of a tuple set of family f.
func (f family) parseTuple(key []byte) (Tuple, bool) {
	n := int(f.addrLen)
	if len(key) < n+8 {
		return Tuple{}, false
	}
	a, ok := netip.AddrFromSlice(key[:n])
	proto, ok2 := protoOf(uint16(key[n]))
	if !ok || !ok2 {
		return Tuple{}, false
	}
	return Tuple{Addr: a.Unmap(), Protocol: proto, Port: binaryutil.BigEndian.Uint16(key[n+4 : n+6])}, true
}

// Register numbers: a concatenation is loaded into consecutive 32-bit
// registers starting at NFT_REG_1 (= NFT_REG32_00, 8).
const reg1 = 1

func reg32(byteOffset uint32) uint32 { return unix.NFT_REG32_00 + byteOffset/4 }

// loadTuple loads "<ip> daddr . meta l4proto . th dport" into reg 1 on,
// after checking the family; it returns the byte length loaded.
func (f family) loadTuple() ([]expr.Any, uint32) {
	ex := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(f.addrLen)},
		&expr.Payload{DestRegister: reg32(f.addrLen + 4), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	return ex, f.addrLen + 8
}

func lookup(set string) *expr.Lookup { return &expr.Lookup{SourceRegister: reg1, SetName: set} }

func markBit(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^mark), Xor: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

func (r *Ruleset) rules() []ruleSpec {
	mark := fmt.Sprintf("0x%08x", r.Mark)
	out := []ruleSpec{
		{chain: "prerouting", text: "jump mark-masq", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "mark-masq"}}},
		{chain: "output", text: "jump mark-masq", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "mark-masq"}}},
		{chain: "prerouting", text: "jump external-local", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "external-local"}}},
		{chain: "output", text: "jump external-local", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "external-local"}}},
	}
	for _, f := range families {
		cidr := r.ClusterCIDR4
		if !f.is4 {
			cidr = r.ClusterCIDR6
		}
		tuple, _ := f.loadTuple()
		tupleText := f.ip + " daddr . meta l4proto . th dport"
		switch {
		case r.MasqueradeAll:
			ex := append(append(tuple, lookup("cluster-ips-"+f.suffix)), markBit(r.Mark)...)
			out = append(out, ruleSpec{chain: "mark-masq", text: fmt.Sprintf("%s @cluster-ips-%s meta mark set meta mark | %s", tupleText, f.suffix, mark), exprs: ex})
		case cidr.IsValid():
			ex := append(tuple, lookup("cluster-ips-"+f.suffix),
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.addrLen},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: f.addrLen, Mask: prefixMask(cidr), Xor: make([]byte, f.addrLen)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: cidr.Addr().AsSlice()})
			ex = append(ex, markBit(r.Mark)...)
			out = append(out, ruleSpec{chain: "mark-masq", text: fmt.Sprintf("%s @cluster-ips-%s %s saddr != %s meta mark set meta mark | %s", tupleText, f.suffix, f.ip, cidr, mark), exprs: ex})
		}
	}
	for _, f := range families {
		tuple, _ := f.loadTuple()
		ex := append(append(tuple, lookup("external-masq-"+f.suffix)), markBit(r.Mark)...)
		out = append(out, ruleSpec{chain: "mark-masq", text: fmt.Sprintf("%s daddr . meta l4proto . th dport @external-masq-%s meta mark set meta mark | %s", f.ip, f.suffix, mark), exprs: ex})
	}
	out = append(out, r.shortCircuitRules(mark)...)
	for _, f := range families {
		tuple, _ := f.loadTuple()
		ex := append(ctNew(), append(tuple, lookup("external-drop-"+f.suffix), &expr.Verdict{Kind: expr.VerdictDrop})...)
		out = append(out, ruleSpec{chain: "drop-input", text: fmt.Sprintf("ct state new %s daddr . meta l4proto . th dport @external-drop-%s drop", f.ip, f.suffix), exprs: ex})
	}
	out = append(out, r.guardRules()...)
	for _, f := range families {
		tuple, n := f.loadTuple()
		ex := append(tuple,
			&expr.Payload{DestRegister: reg32(n), Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.addrLen},
			lookup("hairpin-"+f.suffix), &expr.Masq{})
		out = append(out, ruleSpec{chain: "postrouting", text: fmt.Sprintf("%s daddr . meta l4proto . th dport . %s saddr @hairpin-%s masquerade", f.ip, f.ip, f.suffix), exprs: ex})
	}
	out = append(out, ruleSpec{chain: "postrouting",
		text: fmt.Sprintf("meta mark & %s != 0x00000000 meta mark set meta mark & 0x%08x masquerade", mark, ^r.Mark),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(r.Mark), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^r.Mark), Xor: make([]byte, 4)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
			&expr.Masq{},
		}})
	for _, f := range families {
		for _, chain := range []string{"reject-input", "reject-output"} {
			ex := append(ctNew(), &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.addrLen},
				lookup("cluster-vips-"+f.suffix), rejectExpr())
			out = append(out, ruleSpec{chain: chain, text: fmt.Sprintf("ct state new %s daddr @cluster-vips-%s reject", f.ip, f.suffix), exprs: ex})
		}
	}
	for _, cidr := range r.ServiceCIDRs {
		f := families[0]
		if !cidr.Addr().Is4() {
			f = families[1]
		}
		for _, chain := range []string{"reject-output", "reject-forward"} {
			ex := append(ctNew(), &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.addrLen},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: f.addrLen, Mask: prefixMask(cidr), Xor: make([]byte, f.addrLen)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: cidr.Addr().AsSlice()},
				rejectExpr())
			out = append(out, ruleSpec{chain: chain, text: fmt.Sprintf("ct state new %s daddr %s reject", f.ip, cidr), exprs: ex})
		}
	}
	return out
}

// guardRules drop, in guard-prerouting and guard-output, a new connection
// to a ClusterIP virtual server of internal-drop (internalTrafficPolicy
// Local served only elsewhere), and one to a guarded load-balancer virtual
// server (lb-guarded) whose source no range of it admits (lb-sources,
// keyed by the virtual server and a source range). The tuple loaded for
// the lb-guarded lookup stays in its registers for the second, which
// appends the source address.
func (r *Ruleset) guardRules() []ruleSpec {
	var out []ruleSpec
	for _, chain := range []string{"guard-prerouting", "guard-output"} {
		for _, f := range families {
			tuple, _ := f.loadTuple()
			ex := append(ctNew(), tuple...)
			ex = append(ex, lookup(internalDropSet+"-"+f.suffix), &expr.Verdict{Kind: expr.VerdictDrop})
			out = append(out, ruleSpec{chain: chain, exprs: ex,
				text: fmt.Sprintf("ct state new %s daddr . meta l4proto . th dport @%s-%s drop", f.ip, internalDropSet, f.suffix)})
		}
		for _, f := range families {
			tuple, n := f.loadTuple()
			ex := append(ctNew(), tuple...)
			ex = append(ex, lookup("lb-guarded-"+f.suffix),
				&expr.Payload{DestRegister: reg32(n), Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.addrLen},
				&expr.Lookup{SourceRegister: reg1, SetName: "lb-sources-" + f.suffix, Invert: true},
				&expr.Verdict{Kind: expr.VerdictDrop})
			out = append(out, ruleSpec{chain: chain, exprs: ex,
				text: fmt.Sprintf("ct state new %s daddr . meta l4proto . th dport @lb-guarded-%s %s daddr . meta l4proto . th dport . %s saddr != @lb-sources-%s drop", f.ip, f.suffix, f.ip, f.ip, f.suffix)})
		}
	}
	return out
}

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return families[0]
	}
	return families[1]
}

// matchTuple matches one destination address, protocol and port.
func (f family) matchTuple(t Tuple) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.addrLen},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: t.Addr.AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(protoNumber(t.Protocol))}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: port(t.Port)},
	}
}

// dnat rewrites the destination to to (registers 1 and 2).
func (f family) dnat(to netip.AddrPort) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: to.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: port(to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

// shortCircuitRules send Pods (the cluster CIDR) and the node itself (a
// local source address) from an externalTrafficPolicy Local address to its
// ClusterIP, marked for masquerade as ClusterIP traffic from there would be.
func (r *Ruleset) shortCircuitRules(mark string) []ruleSpec {
	var out []ruleSpec
	for _, sc := range r.ShortCircuits {
		f := familyOf(sc.From.Addr)
		match := fmt.Sprintf("%s daddr %s %s dport %d", f.ip, sc.From.Addr, sc.From.Protocol.Lower(), sc.From.Port)
		to := fmt.Sprintf("dnat %s to %s", f.ip, sc.To)
		markText := fmt.Sprintf(" meta mark set meta mark | %s", mark)
		if cidr := r.clusterCIDR(sc.From.Addr); cidr.IsValid() {
			ex := append(f.matchTuple(sc.From),
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.addrLen},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: f.addrLen, Mask: prefixMask(cidr), Xor: make([]byte, f.addrLen)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: cidr.Addr().AsSlice()})
			text := fmt.Sprintf("%s %s saddr %s", match, f.ip, cidr)
			if r.MasqueradeAll {
				ex = append(ex, markBit(r.Mark)...)
				text += markText
			}
			out = append(out, ruleSpec{chain: "external-local", text: text + " " + to, exprs: append(ex, f.dnat(sc.To)...)})
		}
		ex := append(f.matchTuple(sc.From),
			&expr.Fib{Register: reg1, FlagSADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)})
		ex = append(append(ex, markBit(r.Mark)...), f.dnat(sc.To)...)
		out = append(out, ruleSpec{chain: "external-local", text: match + " fib saddr type local" + markText + " " + to, exprs: ex})
	}
	return out
}

func ctNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}
}

// rejectExpr answers with ICMP (or ICMPv6) port unreachable, like IPVS
// and proxyd's other modes.
func rejectExpr() expr.Any {
	return &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}
}

func prefixMask(p netip.Prefix) []byte {
	n := p.Addr().BitLen() / 8
	m := make([]byte, n)
	for i := range p.Bits() {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}
