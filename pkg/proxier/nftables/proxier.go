package nftables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Proxier is the nftables Backend.
type Proxier struct {
	cfg      proxier.Config
	families []model.IPFamily
	conn     *gnft.Conn
	sock     *netlink.Conn // conn's socket, for deadlines
	// written is what the kernel holds per family as proxyd last wrote it;
	// none means "don't trust the kernel's view, rewrite in full".
	written map[model.IPFamily]*written
	stats   proxier.SyncStats
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
	p := &Proxier{cfg: cfg, families: o.families, written: map[model.IPFamily]*written{}}
	connOpts := []gnft.ConnOption{gnft.AsLasting(), gnft.WithSockOptions(largeBuffers, func(c *netlink.Conn) error {
		p.sock = c // set again should the library ever redial
		return nil
	})}
	if o.netnsFD > 0 {
		connOpts = append(connOpts, gnft.WithNetNSFd(o.netnsFD))
	}
	conn, err := gnft.New(connOpts...)
	if err != nil {
		return nil, fmt.Errorf("nftables mode: open netlink: %w", err)
	}
	if _, err := conn.ListTablesOfFamily(gnft.TableFamilyIPv4); err != nil {
		_ = conn.CloseLasting()
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
func (p *Proxier) Close() error { return p.conn.CloseLasting() }

// Sync implements proxier.Backend: one transaction per family, holding only
// what d changed since the last successful sync, or everything when proxyd
// cannot trust what the kernel holds (first sync, after an error, or when
// the table was changed behind its back, which the periodic resync checks).
func (p *Proxier) Sync(ctx context.Context, s *model.State, d model.Diff) error {
	stats := proxier.SyncStats{}
	changed := d.Changed()
	for _, f := range p.families {
		if err := p.syncFamily(ctx, s, changed, f, &stats); err != nil {
			delete(p.written, f)
			return &proxier.FamilyError{Family: f, Err: err}
		}
	}
	stats.Skipped = stats.KernelOps == 0
	p.stats = stats
	if stats.Full && stats.KernelOps > bigTransaction {
		// A large batch of netlink messages was just garbage; give the
		// memory back now rather than keep the peak as resident size.
		debug.FreeOSMemory()
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
	if w != nil && len(changed) == 0 {
		exists, use, err := tableState(p.conn, f)
		if err != nil {
			return Plan{}, nil, err
		}
		if !exists || !useMatches(use, w.objects()) {
			klog.InfoS("nftables table changed outside proxyd, rewriting it", "family", f, "exists", exists, "objects", use, "expected", w.objects())
			w = nil
		}
	}
	if w == nil {
		desired, fresh := renderAll(s, p.cfg, f)
		return FullPlan(f, desired), fresh, nil
	}
	delete(p.written, f) // w is updated in place; only a success puts it back
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
