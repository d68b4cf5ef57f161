package nftables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"time"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Proxier is the nftables Backend.
type Proxier struct {
	cfg      proxier.Config
	families []model.IPFamily
	conn     *nft.Conn
	sock     *netlink.Conn // conn's real socket, for deadlines
	// written is what the kernel holds per family as proxyd last wrote it;
	// none means "don't trust the kernel's view, rewrite in full".
	written map[model.IPFamily]*written
	stats   proxier.SyncStats
	drift   driftCheck
	commits int // transactions this sync committed
	// refused holds the service ports left out because the kernel refused
	// their rules, and that refusal.
	refused proxier.RefusedError
}

// Option configures a Proxier.
type Option func(*options)

type options struct {
	netnsFD  int
	families []model.IPFamily
}

// WithNetNS programs the network namespace open at fd instead of the
// current one (tests use it to stay out of the host's namespace).
func WithNetNS(fd int) Option { return func(o *options) { o.netnsFD = fd } }

// WithFamilies limits the IP families programmed (default both).
func WithFamilies(f ...model.IPFamily) Option { return func(o *options) { o.families = f } }

// New connects to the kernel's nftables and checks that it answers.
func New(cfg proxier.Config, opts ...Option) (*Proxier, error) {
	o := options{families: []model.IPFamily{model.IPv4, model.IPv6}}
	for _, opt := range opts {
		opt(&o)
	}
	p := &Proxier{cfg: cfg, families: o.families, written: map[model.IPFamily]*written{}, drift: driftCheck{netnsFD: o.netnsFD}}
	conn, err := nft.Dial(o.netnsFD, nft.LargeBuffers)
	if err != nil {
		return nil, fmt.Errorf("nftables mode: open netlink: %w", err)
	}
	p.sock = conn.Socket()
	if _, err := conn.ListTablesOfFamily(gnft.TableFamilyIPv4); err != nil {
		_ = conn.Close()
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("nftables mode needs CAP_NET_ADMIN: %w", err)
		}
		return nil, fmt.Errorf("nftables mode: the kernel's nf_tables does not answer: %w", err)
	}
	p.conn = conn
	return p, nil
}

// Mode implements proxier.Backend.
func (p *Proxier) Mode() string { return "nftables" }

// Config returns the configuration the backend renders with.
func (p *Proxier) Config() proxier.Config { return p.cfg }

// Families returns the IP families the backend programs.
func (p *Proxier) Families() []model.IPFamily { return p.families }

// LastSyncStats implements proxier.StatsReporter.
func (p *Proxier) LastSyncStats() proxier.SyncStats { return p.stats }

// Close releases the netlink connection.
func (p *Proxier) Close() error { return p.conn.Close() }

// Sync implements proxier.Backend: one transaction per family, holding only
// what d changed since the last successful sync, or everything when proxyd
// cannot trust what the kernel holds (first sync, after an error, or when
// the table was changed behind its back, which the periodic resync checks).
func (p *Proxier) Sync(ctx context.Context, s *model.State, d model.Diff) error {
	stats := proxier.SyncStats{}
	changed := d.Changed()
	p.commits = 0
	gen, clean := p.drift.start(p.conn)
	if !clean {
		for _, f := range p.families {
			if p.written[f] != nil && p.drift.repairNeeded(p.cfg, f) {
				delete(p.written, f) // the full rewrite below repairs it
				stats.DriftRepairs++
			}
		}
	}
	// Ports the kernel refused stay out until they change.
	out := slices.DeleteFunc(slices.Clone(p.refused.Ports), func(k model.ServicePortKey) bool { return slices.Contains(changed, k) })
	programmed := p.without(s, out)
	err := p.syncAll(ctx, programmed, changed, &stats)
	if refusal(err) {
		var culprits []model.ServicePortKey
		culprits, programmed, err = p.contain(ctx, s, changed, out, err, &stats)
		out = append(out, culprits...)
	}
	if err != nil {
		p.drift.forget()
		return err
	}
	p.drift.done(p.conn, gen, programmed, p.commits)
	stats.Skipped = stats.KernelOps == 0
	p.stats = stats
	if stats.Full && stats.KernelOps > bigTransaction {
		// A large batch of netlink messages was just garbage; give the
		// memory back now rather than keep the peak as resident size.
		debug.FreeOSMemory()
	}
	p.refused.Ports = out
	if len(out) > 0 {
		slices.SortFunc(p.refused.Ports, model.ServicePortKey.Compare)
		return &p.refused
	}
	return nil
}

// syncAll writes every family's transaction. A family whose transaction
// failed otherwise than by the kernel's refusal (which leaves the kernel
// as it was) is rewritten in full next time.
func (p *Proxier) syncAll(ctx context.Context, s *model.State, changed []model.ServicePortKey, stats *proxier.SyncStats) error {
	for _, f := range p.families {
		if err := p.syncFamily(ctx, s, changed, f, stats); err != nil {
			if !refusal(err) {
				delete(p.written, f)
			}
			return &proxier.FamilyError{Family: f, Err: err}
		}
	}
	return nil
}

// syncFamily writes one family's transaction, adding to stats; on error
// the caller forgets what the family holds.
func (p *Proxier) syncFamily(ctx context.Context, s *model.State, changed []model.ServicePortKey, f model.IPFamily, stats *proxier.SyncStats) error {
	plan, next, err := p.plan(s, changed, f)
	if err != nil {
		return err
	}
	stats.Full = stats.Full || plan.Full
	stats.KernelOps += plan.Size()
	stats.ChainCount += next.chains
	if plan.Empty() {
		p.written[f] = next
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var old *kernelTable
	if plan.Full {
		if old, err = listTable(p.conn, f); err != nil {
			return err
		}
	}
	if err := p.write(plan, old); err != nil {
		if old == nil {
			return err
		}
		// Keeping the base chains failed; delete the table instead.
		klog.InfoS("Could not rewrite the nftables table in place, recreating it", "family", f, "err", err)
		if err := p.write(plan, nil); err != nil {
			return err
		}
	}
	p.written[f] = next
	klog.V(4).InfoS("Wrote nftables transaction", "family", f, "full", plan.Full, "objects", plan.Size())
	return nil
}

// write queues plan and commits it.
func (p *Proxier) write(plan Plan, old *kernelTable) error {
	f := plan.Family
	if err := queue(p.conn, plan, old); err != nil {
		return fmt.Errorf("sync nftables table %s %s: %w", nftFamily(f), TableName, err)
	}
	if err := p.flush(plan.Size()); err != nil {
		return fmt.Errorf("sync nftables table %s %s (%d objects, full=%v): %w", nftFamily(f), TableName, plan.Size(), plan.Full, err)
	}
	p.commits++
	return nil
}

// bigTransaction is the size past which a full sync returns its memory.
const bigTransaction = 20000

// flush commits the queued batch. A deadline bounds the wait for the
// kernel's acks: if one were lost (a receive buffer overrun), the wait would
// otherwise never end and the dataplane would stop syncing for good.
func (p *Proxier) flush(objects int) error {
	if p.sock != nil {
		deadline := time.Now().Add(30*time.Second + time.Duration(objects)*time.Millisecond)
		if err := p.sock.SetReadDeadline(deadline); err == nil {
			defer func() { _ = p.sock.SetReadDeadline(time.Time{}) }()
		}
	}
	return p.conn.Flush()
}

// plan decides between a full and an incremental write. The returned view
// replaces p.written[f] once the plan is in the kernel.
func (p *Proxier) plan(s *model.State, changed []model.ServicePortKey, f model.IPFamily) (Plan, *written, error) {
	w := p.written[f]
	if w == nil {
		desired, fresh := renderAll(s, p.cfg, f)
		return FullPlan(f, desired), fresh, nil
	}
	w = w.clone() // p.written[f] stays what the kernel holds until the plan is in
	plan := w.update(s, changed, p.cfg, f)
	if w.needFull {
		desired, fresh := renderAll(s, p.cfg, f)
		return FullPlan(f, desired), fresh, nil
	}
	return plan, w, nil
}

// Cleanup implements proxier.Backend: it deletes proxyd's tables.
func (p *Proxier) Cleanup(context.Context) error {
	var errs []error
	for _, f := range []model.IPFamily{model.IPv4, model.IPv6} {
		if err := deleteTable(p.conn, f); err != nil {
			errs = append(errs, err)
		}
		delete(p.written, f)
	}
	return errors.Join(errs...)
}
