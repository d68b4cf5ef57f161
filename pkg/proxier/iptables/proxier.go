package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
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

// DefaultFullSyncEvery is how often a Sync rewrites everything even when
// its view is trusted, to repair what others may have changed (kube-proxy
// uses the same hour).
const DefaultFullSyncEvery = time.Hour

// Proxier is the iptables Backend. It is safe for concurrent use; syncs
// are serialised.
type Proxier struct {
	cfg       proxier.Config
	variant   Variant
	clock     clock.PassiveClock
	fullEvery time.Duration
	// alwaysServices rewrites PROXYD-SERVICES on every partial sync, as
	// kube-proxy does; only the measurements use it.
	alwaysServices bool

	mu       sync.Mutex
	fams     []*family
	needFull bool
	lastFull time.Time
	stats    proxier.SyncStats
}

// family is one IP family's tables and what proxyd last wrote there.
type family struct {
	fam      model.IPFamily
	r        *renderer
	restorer restorer
	ruler    ruler
	w        *written // nil until a full write succeeded
}

var (
	_ proxier.Backend       = (*Proxier)(nil)
	_ proxier.StatsReporter = (*Proxier)(nil)
)

// Option configures New.
type Option func(*options)

type options struct {
	variant   Variant
	binaries  Binaries
	clock     clock.PassiveClock
	fullEvery time.Duration
	families  []model.IPFamily
	detect    func() (Variant, error)
}

// WithVariant uses v instead of detecting the node's variant.
func WithVariant(v Variant) Option { return func(o *options) { o.variant = v } }

// WithBinaries overrides the programs' names or paths; empty fields keep
// the variant's defaults (see DefaultBinaries).
func WithBinaries(b Binaries) Option { return func(o *options) { o.binaries = b } }

// WithClock replaces the clock that schedules periodic full syncs.
func WithClock(c clock.PassiveClock) Option { return func(o *options) { o.clock = c } }

// WithFullSyncEvery sets how often a Sync rewrites everything; 0 or less
// means only when needed (first sync, after an error, RequestFullSync).
func WithFullSyncEvery(d time.Duration) Option { return func(o *options) { o.fullEvery = d } }

// WithFamilies restricts the backend to some IP families (both by
// default); service ports of another family are ignored.
func WithFamilies(fams ...model.IPFamily) Option {
	return func(o *options) { o.families = fams }
}

// New returns the iptables backend for cfg. It detects the node's variant
// unless WithVariant says which, and fails if a program it needs is
// missing.
func New(cfg proxier.Config, opts ...Option) (*Proxier, error) {
	o := options{clock: clock.RealClock{}, fullEvery: DefaultFullSyncEvery,
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
		f, err := newExecFamily(cfg, fam, bins)
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
	return &Proxier{cfg: cfg, variant: o.variant, clock: o.clock, fullEvery: o.fullEvery,
		fams: fams, needFull: true}
}

func newExecFamily(cfg proxier.Config, fam model.IPFamily, b Binaries) (*family, error) {
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
	return &family{fam: fam, r: newRenderer(cfg, fam),
		restorer: &execRestorer{restore: paths[generic+"-restore"], save: paths[generic+"-save"]}, ruler: r}, nil
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
// the chains of changed service ports are written.
func (p *Proxier) Sync(ctx context.Context, s *model.State, _ model.Diff) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.clock.Now()
	full := p.needFull || (p.fullEvery > 0 && start.Sub(p.lastFull) >= p.fullEvery)
	stats := proxier.SyncStats{Full: full, Skipped: true}
	var all []*model.ServicePort
	sorted := func() []*model.ServicePort {
		if all == nil {
			all = s.Sorted()
		}
		return all
	}
	for _, f := range p.fams {
		n, err := p.syncFamily(ctx, f, s, full, sorted)
		if err != nil {
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
	}
	if full {
		p.needFull = false
		p.lastFull = start
	}
	p.stats = stats
	klog.V(4).InfoS("Synced iptables rules", "full", full, "kernelOps", stats.KernelOps,
		"rules", stats.RuleCount, "chains", stats.ChainCount, "elapsed", p.clock.Since(start))
	return nil
}

// syncFamily writes one family and returns how many chains it wrote or
// deleted plus jump rules it inserted.
func (p *Proxier) syncFamily(ctx context.Context, f *family, s *model.State, full bool, sorted func() []*model.ServicePort) (int, error) {
	var t restoreText
	w := f.w
	f.r.forNode(s.Node)
	o := planOptions{sorted: sorted, alwaysServices: p.alwaysServices}
	if full || w == nil {
		owned, err := f.owned(ctx)
		if err != nil {
			return 0, err
		}
		f.w = nil
		o.stale = owned
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
	ops := t.chains + t.deleted
	if full {
		n, err := ensureJumps(f.ruler)
		if err != nil {
			f.w = nil
			return 0, err
		}
		ops += n
	}
	f.w = w
	return ops, nil
}

// owned lists the PROXYD-* chains of the family's nat and filter tables.
func (f *family) owned(ctx context.Context) (staleChains, error) {
	out := staleChains{}
	for _, table := range []string{tableNAT, tableFilter} {
		dump, err := f.restorer.Save(ctx, table)
		if err != nil {
			return nil, fmt.Errorf("list %s chains: %w", table, err)
		}
		out[table] = map[string]bool{}
		for _, c := range chainNames(dump) {
			if len(c) > len(chainPrefix) && c[:len(chainPrefix)] == chainPrefix {
				out[table][c] = true
			}
		}
	}
	return out, nil
}

// Cleanup removes proxyd's jump rules and every PROXYD-* chain of nat and
// filter in each family, and nothing else. Nothing there is not an error.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, f := range p.fams {
		f.w = nil
		if err := f.cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean up %v iptables rules: %w", f.fam, err))
		}
	}
	p.needFull = true
	return errors.Join(errs...)
}

func (f *family) cleanup(ctx context.Context) error {
	owned, err := f.owned(ctx)
	if err != nil {
		return err
	}
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
