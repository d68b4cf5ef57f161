package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	goiptables "github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Mode is the --mode value of this backend.
const Mode = "iptables"

// DefaultVerifyEvery is how often a Sync compares the tables with what it
// wrote even when their mark says nobody touched them (kube-proxy rewrites
// everything this often; proxyd rewrites only what drifted).
const DefaultVerifyEvery = time.Hour

// Proxier is the iptables Backend. It is safe for concurrent use; syncs
// are serialised.
type Proxier struct {
	cfg         proxier.Config
	variant     Variant
	clock       clock.PassiveClock
	verifyEvery time.Duration
	// alwaysServices rewrites PROXYD-SERVICES on every partial sync, as
	// kube-proxy does; only the measurements use it.
	alwaysServices bool

	mu       sync.Mutex
	fams     []*family
	needFull bool
	stats    proxier.SyncStats
	// ensure creates an nfacct counter (nil: nothing counts); counters
	// are those the last full write found (see counters.go).
	ensure         func(name string) error
	counters       Counters
	countersLogged bool
}

// family is one IP family's tables and what proxyd last wrote there.
type family struct {
	fam      model.IPFamily
	r        *renderer
	restorer restorer
	ruler    ruler
	w        *written // nil until a full write succeeded
	// refused are the service ports whose rules the kernel refused, left
	// out while they stay the same (see contain), and refusal why.
	refused map[model.ServicePortKey]*model.ServicePort
	refusal error
	// watch reads the tables' mark; mark is the one after proxyd's last
	// write or check, trusted when markOK (see drift.go).
	watch      watcher
	mark       mark
	markOK     bool
	lastVerify time.Time
}

var (
	_ proxier.Backend       = (*Proxier)(nil)
	_ proxier.StatsReporter = (*Proxier)(nil)
)

// Option configures New.
type Option func(*options)

type options struct {
	variant     Variant
	binaries    Binaries
	clock       clock.PassiveClock
	verifyEvery time.Duration
	families    []model.IPFamily
	detect      func() (Variant, error)
	ensure      func(name string) error
}

// WithVariant uses v instead of detecting the node's variant.
func WithVariant(v Variant) Option { return func(o *options) { o.variant = v } }

// WithBinaries overrides the programs' names or paths; empty fields keep
// the variant's defaults (see DefaultBinaries).
func WithBinaries(b Binaries) Option { return func(o *options) { o.binaries = b } }

// WithClock replaces the clock that schedules periodic verifications.
func WithClock(c clock.PassiveClock) Option { return func(o *options) { o.clock = c } }

// WithVerifyEvery sets how often a Sync compares the tables with what it
// wrote although their mark did not move; 0 or less means never.
func WithVerifyEvery(d time.Duration) Option { return func(o *options) { o.verifyEvery = d } }

// WithFamilies restricts the backend to some IP families (both by
// default); service ports of another family are ignored.
func WithFamilies(fams ...model.IPFamily) Option {
	return func(o *options) { o.families = fams }
}

// New returns the iptables backend for cfg. It detects the node's variant
// unless WithVariant says which, and fails if a program it needs is
// missing.
func New(cfg proxier.Config, opts ...Option) (*Proxier, error) {
	o := options{clock: clock.RealClock{}, verifyEvery: DefaultVerifyEvery,
		families: []model.IPFamily{model.IPv4, model.IPv6}, detect: Detect}
	for _, opt := range opts {
		opt(&o)
	}
	if o.variant == "" {
		v, err := o.detect()
		if err != nil {
			klog.ErrorS(err, "Could not detect the iptables variant, using nft")
		}
		o.variant = v
	}
	if o.variant != VariantNFT && o.variant != VariantLegacy {
		return nil, fmt.Errorf("iptables mode: unknown variant %q (want %q or %q)", o.variant, VariantNFT, VariantLegacy)
	}
	bins := o.binaries.merge(DefaultBinaries(o.variant))
	var fams []*family
	for _, fam := range o.families {
		f, err := newExecFamily(cfg, fam, bins, o.variant)
		if err != nil {
			return nil, err
		}
		fams = append(fams, f)
	}
	p := newProxier(cfg, o, fams)
	klog.InfoS("Using iptables", "variant", p.variant, "families", fmt.Sprint(o.families))
	return p, nil
}

func newProxier(cfg proxier.Config, o options, fams []*family) *Proxier {
	return &Proxier{cfg: cfg, variant: o.variant, clock: o.clock, verifyEvery: o.verifyEvery,
		fams: fams, needFull: true, ensure: o.ensure}
}

func newExecFamily(cfg proxier.Config, fam model.IPFamily, b Binaries, v Variant) (*family, error) {
	restore, save, ipt, generic := b.Restore, b.Save, b.IPTables, "iptables"
	proto := goiptables.ProtocolIPv4
	if fam == model.IPv6 {
		restore, save, ipt, generic = b.Restore6, b.Save6, b.IP6Tables, "ip6tables"
		proto = goiptables.ProtocolIPv6
	}
	paths := map[string]string{}
	for _, need := range []struct{ generic, name string }{
		{generic + "-restore", restore}, {generic + "-save", save}, {generic, ipt},
	} {
		path, err := exec.LookPath(need.name)
		if err != nil {
			what := need.generic
			if need.name != need.generic {
				what += " (" + need.name + ")"
			}
			return nil, fmt.Errorf("iptables mode needs %s: %w", what, err)
		}
		paths[need.generic] = path
	}
	r, err := goiptables.New(goiptables.IPFamily(proto), goiptables.Path(paths[generic]), goiptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("iptables mode needs a working %s (%s): %w", generic, paths[generic], err)
	}
	var watch watcher = nftWatcher{}
	if v == VariantLegacy {
		watch = legacyWatcher{fam: fam}
	}
	return &family{fam: fam, r: newRenderer(cfg, fam),
		restorer: &execRestorer{restore: paths[generic+"-restore"], save: paths[generic+"-save"]}, ruler: r, watch: watch}, nil
}

// Mode returns "iptables".
func (p *Proxier) Mode() string { return Mode }

// Variant is the iptables variant in use.
func (p *Proxier) Variant() Variant { return p.variant }

// Config is the configuration the Proxier renders with.
func (p *Proxier) Config() proxier.Config { return p.cfg }

// RequestFullSync makes the next Sync rewrite everything.
func (p *Proxier) RequestFullSync() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.needFull = true
}

// LastSyncStats describes the last Sync.
func (p *Proxier) LastSyncStats() proxier.SyncStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Sync makes proxyd's chains match s, in each family with one
// iptables-restore. d is not needed: the Proxier compares s with what it
// wrote itself. A full sync rewrites every chain, deletes the PROXYD-*
// chains it no longer wants and ensures the jump rules; otherwise only
// the chains whose text changed are written, unless the family's tables
// drifted from what proxyd wrote (see drift.go): then it is rewritten in
// full, and the repair counted in SyncStats.DriftRepairs.
func (p *Proxier) Sync(ctx context.Context, s *model.State, _ model.Diff) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.clock.Now()
	full := p.needFull
	stats := proxier.SyncStats{Full: full, Skipped: true}
	var all []*model.ServicePort
	sorted := func() []*model.ServicePort {
		if all == nil {
			all = s.Sorted()
		}
		return all
	}
	// Every family's drift is checked before any is written: with
	// iptables-nft both share one mark, which a write moves.
	marks := newMarkBook()
	fulls := make([]bool, len(p.fams))
	for i, f := range p.fams {
		m, merr := marks.start(f.watch)
		fulls[i] = full || f.w == nil
		if fulls[i] {
			continue
		}
		drifted, err := f.drifted(ctx, m, merr, start, p.verifyEvery)
		if err != nil {
			klog.ErrorS(err, "Could not compare the iptables rules with what proxyd wrote; rewriting them", "family", f.fam)
		}
		if drifted {
			stats.DriftRepairs++
		}
		fulls[i] = drifted || err != nil
	}
	counters := p.counters
	if slices.Contains(fulls, true) {
		counters = p.ensureCounters()
	}
	var refused *proxier.RefusedError
	for i, f := range p.fams {
		stats.Full = stats.Full || fulls[i]
		if fulls[i] {
			f.r.counters = counters
		}
		n, err := p.syncFamily(ctx, f, s, fulls[i], sorted, marks)
		if err != nil {
			marks.finish(p.fams)
			p.needFull = true
			p.stats = proxier.SyncStats{Full: full}
			return &proxier.FamilyError{Family: f.fam, Err: fmt.Errorf("sync %v iptables rules: %w", f.fam, err)}
		}
		if n > 0 {
			stats.Skipped = false
		}
		stats.KernelOps += n
		stats.RuleCount += f.w.rules
		stats.ChainCount += f.w.chains
		refused = f.addRefused(refused)
	}
	marks.finish(p.fams)
	p.needFull = false
	p.stats = stats
	klog.V(4).InfoS("Synced iptables rules", "full", full, "kernelOps", stats.KernelOps,
		"rules", stats.RuleCount, "chains", stats.ChainCount, "elapsed", p.clock.Since(start))
	if refused != nil {
		return refused
	}
	return nil
}

// syncFamily writes one family, leaving out the service ports the kernel
// refused, and returns how many chains it wrote or deleted plus jump rules
// it inserted. When the kernel refuses the write, it narrows the refusal
// to service ports and programs everything else (see contain).
func (p *Proxier) syncFamily(ctx context.Context, f *family, s *model.State, full bool, sorted func() []*model.ServicePort, marks *markBook) (int, error) {
	if rest := f.withoutRefused(s); rest != s {
		s, sorted = rest, rest.Sorted
	}
	n, err := p.write(ctx, f, s, full, sorted, marks)
	if err == nil || ctx.Err() != nil {
		return n, err
	}
	return p.contain(ctx, f, s, err, marks)
}

// write writes one family's chains for s: in full, or only what differs
// from what it wrote last.
func (p *Proxier) write(ctx context.Context, f *family, s *model.State, full bool, sorted func() []*model.ServicePort, marks *markBook) (int, error) {
	var t restoreText
	w := f.w
	f.r.forNode(s.Node)
	o := planOptions{sorted: sorted, alwaysServices: p.alwaysServices}
	if full || w == nil {
		l, err := f.list(ctx)
		if err != nil {
			return 0, err
		}
		f.w = nil
		o.stale, o.jumps = l.chains, l.missing
		w = f.r.plan(&t, s, nil, o)
	} else {
		f.r.plan(&t, s, w, o)
		if t.empty() {
			return 0, nil
		}
	}
	data := t.bytes()
	klog.V(4).InfoS("Writing iptables rules", "family", f.fam, "full", full, "chains", t.chains, "deleted", t.deleted, "bytes", len(data))
	if err := f.restorer.Restore(ctx, data); err != nil {
		f.w = nil
		return 0, err
	}
	marks.wrote(f.watch, t.sections())
	if full || w == nil {
		f.lastVerify = p.clock.Now()
	}
	f.w = w
	return t.chains + t.deleted + t.inserted, nil
}

// listing is what a full write needs to know of the kernel's tables.
type listing struct {
	chains  staleChains // the PROXYD-* chains of nat and filter
	missing []jumpRule  // the jump rules not in their built-in chain
}

// list lists the family's nat and filter tables (iptables-save) for a
// full write: which PROXYD-* chains they hold and which of proxyd's jump
// rules they lack. The write inserts those in the same restore, instead of
// a check and an insert per rule, each an iptables run that reads the
// whole table (0.3-0.44 s each with iptables-legacy at 1k Services × 10
// here).
func (f *family) list(ctx context.Context) (*listing, error) {
	l := &listing{chains: staleChains{}}
	for _, table := range []string{tableNAT, tableFilter} {
		ops, err := f.listOps(ctx, table)
		if err != nil {
			return nil, err
		}
		l.chains[table] = map[string]bool{}
		have := map[string]bool{}
		for _, o := range ops {
			switch {
			case o.kind == opChain && strings.HasPrefix(o.chain, chainPrefix):
				l.chains[table][o.chain] = true
			case o.kind == opAppend:
				have[o.chain+" "+joinWords(o.rule)] = true
			}
		}
		for _, j := range jumpRules {
			if j.table == table && !have[j.chain+" "+joinWords(j.spec)] {
				l.missing = append(l.missing, j)
			}
		}
	}
	return l, nil
}

// listOps lists one of the family's tables (iptables-save) as the
// operations that would restore it.
func (f *family) listOps(ctx context.Context, table string) ([]op, error) {
	dump, err := f.restorer.Save(ctx, table)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", table, err)
	}
	blocks, err := parseRestore(dump)
	if err != nil {
		return nil, fmt.Errorf("read the listing of %s: %w", table, err)
	}
	var ops []op
	for _, b := range blocks {
		ops = append(ops, b.ops...)
	}
	return ops, nil
}

// Cleanup removes proxyd's jump rules and every PROXYD-* chain of nat and
// filter in each family, and nothing else. Nothing there is not an error.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, f := range p.fams {
		f.w, f.refused, f.refusal = nil, nil, nil
		if err := f.cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean up %v iptables rules: %w", f.fam, err))
		}
	}
	p.needFull = true
	return errors.Join(errs...)
}

func (f *family) cleanup(ctx context.Context) error {
	l, err := f.list(ctx)
	if err != nil {
		return err
	}
	owned := l.chains
	// The built-in chains' jumps go first: a chain that is jumped to
	// cannot be deleted.
	if err := deleteJumps(f.ruler, func(table, chain string) bool { return owned[table][chain] }); err != nil {
		return err
	}
	var t restoreText
	for _, table := range []string{tableFilter, tableNAT} {
		for _, c := range slices.Sorted(maps.Keys(owned[table])) {
			t.deleteChain(table, c)
		}
	}
	if t.empty() {
		return nil
	}
	if err := f.restorer.Restore(ctx, t.bytes()); err != nil {
		return fmt.Errorf("delete proxyd chains: %w", err)
	}
	return nil
}
