package nft

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Packet is the first packet of a new connection, as the rules see it.
type Packet struct {
	Src   netip.Addr
	Dst   netip.AddrPort
	Proto uint8
	// FromNode: the node itself sends it (the output hook); otherwise it
	// arrives from outside or from a Pod (prerouting).
	FromNode bool
}

// Fate is what became of a traced packet.
type Fate uint8

// The fates.
const (
	Accepted Fate = iota // it went on (rewritten or not)
	Dropped
	Rejected
)

func (f Fate) String() string { return [...]string{"accepted", "dropped", "rejected"}[f] }

// Result is one traced packet's fate and the path it took.
type Result struct {
	Fate Fate
	// Packet is the packet as it left the last hook.
	Packet Packet
	// DNAT: the destination was rewritten (by a rule or a pseudo-chain).
	DNAT bool
	// Masquerade: the source is rewritten to the outgoing address.
	Masquerade bool
	// Path lists, in order, every rule that matched and every note a
	// pseudo-chain made.
	Path []Step
}

// Step is one matched rule (or pseudo-chain note) of a trace.
type Step struct {
	Hook  Hook
	Table *Table // nil for a pseudo-chain
	Chain string
	Rule  int // index in Chain; -1 for a pseudo-chain's note
	rule  Rule
	note  string
	args  []any
}

// Text is the rule as nft prints it, or the pseudo-chain's note.
func (s Step) Text() string {
	if s.Table == nil {
		return fmt.Sprintf(s.note, s.args...)
	}
	return s.rule.Text(s.Table.Family)
}

func (s Step) String() string {
	if s.Table == nil {
		return fmt.Sprintf("%s %s: %s", s.Hook, s.Chain, s.Text())
	}
	return fmt.Sprintf("%s %s %s %s rule %d: %s", s.Hook, s.Table.Family, s.Table.Name, s.Chain, s.Rule, s.Text())
}

// Pseudo is a hook function that is not an nftables chain (IPVS),
// evaluated at its hook and priority among the base chains.
type Pseudo struct {
	Name     string
	Hook     Hook
	Priority int32
	// Run sees a packet at the hook. It may rewrite its destination
	// (Flow.Redirect) or end it (Flow.Reject, Flow.Drop), and reports
	// stolen when it took the packet and sent it on itself through the
	// output hook, as IPVS does with what it schedules. A packet so sent
	// is not shown to pseudo-chains again.
	Run func(fl *Flow) (stolen bool, err error)
}

// Tracer walks packets through the netfilter hooks the way the kernel
// does, over a set of tables and pseudo-chains:
//
//   - a forwarded or incoming packet passes prerouting; then the routing
//     decision sends it to input when its destination is local, else to
//     forward and postrouting;
//   - the node's own packet passes output and postrouting, and when its
//     destination is local it comes back over loopback through prerouting
//     and input;
//   - a packet a pseudo-chain stole (IPVS, after it rewrote the
//     destination) passes output and postrouting.
//
// At each hook, every base chain of every table of the packet's family
// (ip or ip6, and inet) runs, with the pseudo-chains, ordered by priority
// (the number from the table, never the name). NAT chains run where the
// kernel runs them: inside its NAT hook, at priority -100 (dstnat) in
// prerouting and output and 100 (srcnat) in postrouting and input, among
// themselves by their own priority, each only until one of them binds the
// connection, and only on the first hook of each direction (a loopback
// packet's NAT was decided on its way out). Ties keep the order the tables
// and chains were given in, pseudo-chains first.
//
// Every packet is the first of a new connection: `ct state new` matches.
// Dynamic sets remember what update statements added, for later packets
// (affinity); nothing expires, since the tracer has no clock. Statements a
// hook cannot run (dnat outside a NAT chain), references to missing sets or
// chains and keys of the wrong type are errors. A Tracer is safe for
// concurrent use.
type Tracer struct {
	tables []*Table
	pseudo []Pseudo
	local  func(netip.Addr) bool

	mu    sync.Mutex
	mem   *memory
	index map[*Set]map[string]int
	sets  map[*Table]map[string]*Set
	hooks map[hookKey][]entry
	// scratch holds the key of the lookup under way.
	scratch []byte
}

// NewTracer traces through tables and pseudo-chains; local reports whether
// an address is the node's own (fib type local, the routing decision).
func NewTracer(local func(netip.Addr) bool, tables []*Table, pseudo ...Pseudo) *Tracer {
	return &Tracer{tables: tables, pseudo: pseudo, local: local, mem: newMemory(),
		index: map[*Set]map[string]int{}, sets: map[*Table]map[string]*Set{}, hooks: map[hookKey][]entry{}}
}

// Trace walks p through the hooks. rnd(n) returns a uniformly random
// number in [0, n) and stands for the kernel's random choices (numgen, a
// pseudo-chain's scheduler). What dynamic sets learn is kept for later
// packets.
func (t *Tracer) Trace(p Packet, rnd func(n uint32) uint32) (Result, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.trace(p, randomChooser(rnd), t.mem)
}

func (t *Tracer) trace(p Packet, ch chooser, mem *memory) (Result, error) {
	fl := &Flow{Packet: p, chooser: ch, mem: mem}
	if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Addr().Is4() {
		return Result{}, fmt.Errorf("packet %v → %v: addresses of one family needed", p.Src, p.Dst)
	}
	if err := t.walk(fl); err != nil {
		return Result{}, err
	}
	return Result{Fate: fl.fate, Packet: fl.Packet, DNAT: fl.rewritten, Masquerade: fl.masq, Path: fl.path}, nil
}

// walk sends fl through the hooks in the kernel's order.
func (t *Tracer) walk(fl *Flow) error {
	if !fl.FromNode {
		if _, err := t.hook(fl, Prerouting); err != nil || fl.done() {
			return err
		}
		if !t.local(fl.Dst.Addr()) {
			if _, err := t.hook(fl, Forward); err != nil || fl.done() {
				return err
			}
			_, err := t.hook(fl, Postrouting)
			return err
		}
		stolen, err := t.hook(fl, Input)
		if err != nil || fl.done() || !stolen {
			return err
		}
	}
	for {
		stolen, err := t.hook(fl, Output)
		if err != nil || fl.done() {
			return err
		}
		if !stolen {
			break
		}
	}
	if _, err := t.hook(fl, Postrouting); err != nil || fl.done() || fl.resent || !t.local(fl.Dst.Addr()) {
		return err
	}
	// Back over loopback.
	if _, err := t.hook(fl, Prerouting); err != nil || fl.done() {
		return err
	}
	_, err := t.hook(fl, Input)
	return err
}

type hookKey struct {
	hook Hook
	ip   Family
}

// entry is one function at a hook: a base chain or a pseudo-chain.
type entry struct {
	prio, sub int32 // where it runs; sub orders NAT chains among themselves
	table     *Table
	chain     *Chain
	pseudo    *Pseudo
}

// natPriority is where the kernel's NAT hook runs, which runs every NAT
// chain of that hook (NF_IP_PRI_NAT_DST and NF_IP_PRI_NAT_SRC).
func natPriority(h Hook) int32 {
	if h == Prerouting || h == Output {
		return -100
	}
	return 100
}

// entries lists what runs at hook h for packets of IP family ip, in order.
func (t *Tracer) entries(h Hook, ip Family) []entry {
	k := hookKey{h, ip}
	if es, ok := t.hooks[k]; ok {
		return es
	}
	var es []entry
	for i := range t.pseudo {
		if p := &t.pseudo[i]; p.Hook == h {
			es = append(es, entry{prio: p.Priority, sub: p.Priority, pseudo: p})
		}
	}
	for _, tb := range t.tables {
		if !tb.Family.covers(ip) {
			continue
		}
		for _, c := range tb.Chains {
			if c.Base == nil || c.Base.Hook != h {
				continue
			}
			e := entry{prio: c.Base.Priority, sub: c.Base.Priority, table: tb, chain: c}
			if c.Base.Type == NAT {
				e.prio = natPriority(h)
			}
			es = append(es, e)
		}
	}
	slices.SortStableFunc(es, func(a, b entry) int { return cmp.Or(cmp.Compare(a.prio, b.prio), cmp.Compare(a.sub, b.sub)) })
	t.hooks[k] = es
	return es
}

// hook runs everything registered at h; stolen reports that a pseudo-chain
// took the packet.
func (t *Tracer) hook(fl *Flow, h Hook) (stolen bool, err error) {
	ip := IP
	if fl.Dst.Addr().Is6() {
		ip = IP6
	}
	dnatHook := h == Prerouting || h == Output
	bound := func() bool {
		if dnatHook {
			return fl.dnatBound
		}
		return fl.snatBound
	}
	for _, e := range t.entries(h, ip) {
		if fl.done() {
			return false, nil
		}
		if e.pseudo != nil {
			if fl.resent {
				continue
			}
			fl.hook = h
			stolen, err := e.pseudo.Run(fl)
			if err != nil {
				return false, fmt.Errorf("%s at %s: %w", e.pseudo.Name, h, err)
			}
			if stolen {
				fl.resent = true
				return true, nil
			}
			continue
		}
		if e.chain.Base.Type == NAT && bound() {
			continue
		}
		x := &exec{t: t, fl: fl, table: e.table, hook: h, natChain: e.chain.Base.Type == NAT}
		k, err := x.chain(e.chain, 0)
		if err != nil {
			return false, fmt.Errorf("%s %s chain %s: %w", e.table.Family, e.table.Name, e.chain.Name, err)
		}
		if k == 0 && e.chain.Base.Policy == PolicyDrop {
			k = VerdictDrop
		}
		if k == VerdictDrop && fl.fate == Accepted {
			fl.fate = Dropped
		}
	}
	switch h {
	case Prerouting, Output:
		fl.dnatBound = true
	case Postrouting, Input:
		fl.snatBound = true
	}
	return false, nil
}

// Flow is a packet on its way through the hooks: what the rules did to it
// so far. Pseudo-chains read and change it through its methods.
type Flow struct {
	// Packet is the packet as it is now (its destination after any DNAT).
	Packet
	hook                 Hook
	mark                 uint32
	ctDNAT               bool // ct status dnat
	rewritten, masq      bool
	dnatBound, snatBound bool // the connection's NAT in each direction is decided
	resent               bool
	fate                 Fate
	path                 []Step
	chooser              chooser
	mem                  *memory
}

func (fl *Flow) done() bool { return fl.fate != Accepted }

// Redirect rewrites the destination, as a pseudo-chain's NAT does.
func (fl *Flow) Redirect(to netip.AddrPort) { fl.Dst, fl.rewritten = to, true }

// Reject ends the packet with an error answer to its sender.
func (fl *Flow) Reject() { fl.fate = Rejected }

// Drop ends the packet silently.
func (fl *Flow) Drop() { fl.fate = Dropped }

// Choose returns a random number in [0, n). Numbers between consecutive
// cuts (and below the first, and from the last on) behave alike for the
// caller: enumeration tries one of each such class.
func (fl *Flow) Choose(n uint32, cuts ...uint32) uint32 { return fl.chooser.choose(n, cuts) }

// Remember stores v under key for later packets of this tracer.
func (fl *Flow) Remember(key string, v any) { fl.mem.pseudo[key] = v }

// Forget removes what was stored under key.
func (fl *Flow) Forget(key string) { delete(fl.mem.pseudo, key) }

// Recall returns what Remember stored under key.
func (fl *Flow) Recall(key string) (any, bool) {
	v, ok := fl.mem.pseudo[key]
	return v, ok
}

// Note adds a step to the path, for the pseudo-chain named chain: a text
// formatted as fmt.Sprintf does, only when the path is printed.
func (fl *Flow) Note(chain, format string, args ...any) {
	fl.path = append(fl.path, Step{Hook: fl.hook, Chain: chain, Rule: -1, note: format, args: args})
}

// memory is what dynamic sets and pseudo-chains learned from packets.
type memory struct {
	sets   map[*Set]map[string]bool
	pseudo map[string]any
}

func newMemory() *memory {
	return &memory{sets: map[*Set]map[string]bool{}, pseudo: map[string]any{}}
}

func (m *memory) clone() *memory {
	c := newMemory()
	for s, keys := range m.sets {
		c.sets[s] = make(map[string]bool, len(keys))
		for k := range keys {
			c.sets[s][k] = true
		}
	}
	for k, v := range m.pseudo {
		c.pseudo[k] = v
	}
	return c
}
