package ipvs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Mode is the --mode value of this backend.
const Mode = "ipvs"

// DefaultGracePeriod bounds how long a removed TCP endpoint's real server
// drains at weight 0 before it is deleted with connections still counted.
// kube-proxy waits for its counters without a bound; 15 minutes outlasts
// IPVS's default TCP FIN_WAIT/TIME_WAIT timeouts (2 minutes) and any
// reasonable terminationGracePeriodSeconds, yet does not keep a dead Pod's
// address in the table forever when a client holds an idle connection open.
const DefaultGracePeriod = 15 * time.Minute

// Proxier is the IPVS Backend.
type Proxier struct {
	mu        sync.Mutex
	cfg       proxier.Config
	scheduler string
	grace     time.Duration
	clock     clock.PassiveClock
	log       *slog.Logger
	netnsPath string
	handle    Handle
	links     Links
	fw        Firewall
	sysctl    func(path, value string) error
	optErr    error

	// What the last successful Sync wrote; trusted is false before the
	// first one and after a failure, which makes the next Sync re-read
	// every real server from the kernel.
	trusted     bool
	written     map[VSKey]*VirtualServer
	writtenVIPs map[netip.Addr]bool
	rules       *Ruleset
	rulesText   string // rules.String()
	sysctlsSet  bool
	draining    map[drainKey]time.Time
	stats       proxier.SyncStats
	// gen is the ruleset generation right after proxyd's last write of
	// the proxyd-ipvs table (or its last check that found it intact),
	// when genKnown.
	gen      uint32
	genKnown bool
	// repairs are what the running Sync found changed by someone else.
	repairs []string
}

// Option configures a Proxier.
type Option func(*Proxier)

// WithScheduler sets the IPVS scheduler (--ipvs-scheduler); "" is rr.
func WithScheduler(name string) Option {
	return func(p *Proxier) {
		s, err := ValidateScheduler(name)
		if err != nil {
			p.optErr = errors.Join(p.optErr, err)
			return
		}
		p.scheduler = s
	}
}

// WithHandle replaces the kernel's IPVS, e.g. by a Fake.
func WithHandle(h Handle) Option { return func(p *Proxier) { p.handle = h } }

// WithLinks replaces the kernel's interfaces, e.g. by a FakeLinks.
func WithLinks(l Links) Option { return func(p *Proxier) { p.links = l } }

// WithFirewall replaces the kernel's nftables, e.g. by a FakeFirewall.
func WithFirewall(f Firewall) Option { return func(p *Proxier) { p.fw = f } }

// WithClock sets the clock that times graceful endpoint removal.
func WithClock(c clock.PassiveClock) Option { return func(p *Proxier) { p.clock = c } }

// WithGracePeriod sets how long a removed TCP endpoint drains at most;
// 0 deletes removed endpoints at once.
func WithGracePeriod(d time.Duration) Option {
	return func(p *Proxier) {
		if d < 0 {
			p.optErr = errors.Join(p.optErr, fmt.Errorf("ipvs grace period %v is negative", d))
			return
		}
		p.grace = d
	}
}

// WithLogger sets the logger; the default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(p *Proxier) { p.log = l } }

// WithNetNS makes the kernel handles work in the network namespace at path
// (e.g. /run/netns/NAME) instead of the current one. Sysctls are then left
// alone unless WithSysctl is given too, since /proc/sys/net belongs to the
// process's own namespace.
func WithNetNS(path string) Option { return func(p *Proxier) { p.netnsPath = path } }

// WithSysctl replaces the writer of the IPVS sysctls.
func WithSysctl(f func(path, value string) error) Option { return func(p *Proxier) { p.sysctl = f } }

func build(cfg proxier.Config, opts []Option) *Proxier {
	p := &Proxier{cfg: cfg, scheduler: DefaultScheduler, grace: DefaultGracePeriod, clock: clock.RealClock{},
		writtenVIPs: map[netip.Addr]bool{}, draining: map[drainKey]time.Time{}}
	for _, o := range opts {
		o(p)
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("mode", Mode)
	if p.sysctl == nil && p.netnsPath == "" {
		p.sysctl = writeProcSys
	}
	if p.links == nil {
		l, err := newNetlinkLinks(p.netnsPath)
		if err != nil {
			p.optErr = errors.Join(p.optErr, err)
		} else {
			p.links = l
		}
	}
	if p.fw == nil {
		p.fw = &nftFirewall{netnsPath: p.netnsPath}
	}
	return p
}

// New returns the IPVS backend. Without WithHandle it opens the kernel's
// IPVS and fails with an error wrapping ErrIPVSUnavailable ("ipvs mode
// needs the ip_vs kernel module: ...") when the kernel has none. Whether
// the scheduler's module exists shows at the first Sync, which names it.
func New(cfg proxier.Config, opts ...Option) (*Proxier, error) {
	p := build(cfg, opts)
	if p.optErr != nil {
		return nil, fmt.Errorf("ipvs backend: %w", p.optErr)
	}
	if p.handle == nil {
		h, err := newKernelHandle(p.netnsPath)
		if err != nil {
			return nil, err
		}
		p.handle = h
	}
	return p, nil
}

// Cleanup removes everything an IPVS backend may have left, for
// `proxyd --cleanup` where no Proxier runs: the virtual servers on the
// addresses of proxyd-ipvs0, the interface, and the nftables table. A
// kernel without IPVS (or without dummy or nf_tables) has nothing of the
// kind, which is logged and not an error.
func Cleanup(ctx context.Context, opts ...Option) error {
	p := build(proxier.Config{}, opts)
	if p.optErr != nil {
		return fmt.Errorf("ipvs cleanup: %w", p.optErr)
	}
	if p.handle == nil {
		h, err := newKernelHandle(p.netnsPath)
		if err != nil {
			p.log.Info("IPVS not available; no virtual servers to remove", "err", err)
		} else {
			p.handle = h
		}
	}
	return p.Cleanup(ctx)
}

// Mode returns "ipvs".
func (p *Proxier) Mode() string { return Mode }

// Config returns the configuration the backend renders with.
func (p *Proxier) Config() proxier.Config { return p.cfg }

// Scheduler returns the IPVS scheduler in use.
func (p *Proxier) Scheduler() string { return p.scheduler }

// LastSyncStats describes the last Sync.
func (p *Proxier) LastSyncStats() proxier.SyncStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Draining returns how many removed real servers still drain.
func (p *Proxier) Draining() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.draining)
}

// Sync makes the kernel's IPVS table, proxyd-ipvs0's addresses and the
// proxyd-ipvs nftables table match s. It reads the kernel's virtual servers
// and addresses each time and writes only what differs. A Sync after an
// error, or with an empty Diff (the runner's periodic resync), also
// re-reads every owned virtual server's real servers; otherwise only those
// of changed or draining virtual servers. The nftables table is read back
// only when someone else committed to nftables since proxyd's last write.
// What someone else changed is put back and counted as a drift repair
// (repair.go). IPVS has no transactions: on error the kernel holds a mix,
// and the next Sync repairs it. A virtual server, or a service port's
// nftables rules, that the kernel refuses is left out while everything
// else is written, and Sync returns a proxier.RefusedError.
func (p *Proxier) Sync(ctx context.Context, s *model.State, d model.Diff) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.clock.Now()
	desired := RenderWith(s, p.scheduler, p.cfg)
	for _, c := range desired.Conflicts {
		p.log.Warn("service port left out of IPVS", "conflict", c)
	}
	rules := RenderNetfilter(desired, p.cfg)
	full := !p.trusted || d.Empty()
	p.repairs = nil
	ops, err := p.apply(ctx, desired, rules, full)
	if err != nil {
		p.trusted = false
		return fmt.Errorf("sync ipvs: %w", err)
	}
	p.trusted = true
	reals := 0
	for _, vs := range desired.Servers {
		reals += len(vs.RealServers)
	}
	nrules, tab := 0, rules.Table()
	for _, c := range tab.Chains {
		nrules += len(c.Rules)
	}
	p.stats = proxier.SyncStats{Full: full, KernelOps: ops, Skipped: ops == 0, RuleCount: nrules, ChainCount: len(tab.Chains),
		DriftRepairs: len(p.repairs)}
	p.log.Info("synced", "full", full, "kernelOps", ops, "driftRepairs", len(p.repairs), "virtualServers", len(desired.Servers),
		"realServers", reals, "draining", len(p.draining), "duration", p.clock.Since(start))
	return nil
}

// Cleanup deletes the virtual servers on proxyd's addresses and its
// NodePort virtual servers (as written, or as recorded in the nftables
// table), the dummy interface and the nftables table. It is safe when none exists and when
// IPVS is not available.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	owned := map[netip.Addr]bool{}
	for a := range p.writtenVIPs {
		owned[a] = true
	}
	if p.links != nil {
		bound, err := p.links.Addrs(LinkName)
		if err != nil {
			errs = append(errs, err)
		}
		for _, a := range bound {
			owned[a] = true
		}
	}
	nodeOwned := map[VSKey]bool{}
	for k, vs := range p.written {
		if vs.OnNode {
			nodeOwned[k] = true
		}
	}
	if recorded, err := p.fw.NodeServers(); err != nil {
		errs = append(errs, err)
	} else {
		for _, t := range recorded {
			nodeOwned[VSKey(t)] = true
		}
	}
	deleted := 0
	if p.handle == nil {
		p.log.Info("IPVS not available; skipping virtual servers")
	} else if svcs, err := p.handle.GetServices(); err != nil {
		errs = append(errs, fmt.Errorf("list ipvs services: %w", err))
	} else {
		for _, svc := range svcs {
			if err := ctx.Err(); err != nil {
				return err
			}
			k, ok := keyOf(svc)
			if !ok || (!owned[k.Addr] && !nodeOwned[k]) {
				continue
			}
			if err := p.handle.DelService(svc); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("delete virtual server %s: %w", k, err))
				continue
			}
			deleted++
		}
	}
	if p.links != nil {
		if err := p.links.DeleteLink(LinkName); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.fw.Delete(); err != nil {
		errs = append(errs, err)
	}
	p.trusted, p.written, p.rules, p.rulesText, p.genKnown = false, nil, nil, "", false
	p.writtenVIPs, p.draining = map[netip.Addr]bool{}, map[drainKey]time.Time{}
	p.log.Info("cleaned up", "virtualServers", deleted, "errors", len(errs))
	if len(errs) > 0 {
		return fmt.Errorf("ipvs cleanup: %w", errors.Join(errs...))
	}
	return nil
}

// sysctls kube-proxy's IPVS mode sets too. vs/conntrack keeps IPVS traffic
// visible to conntrack, without which netfilter cannot masquerade it.
var sysctls = [][2]string{
	{"net/ipv4/vs/conntrack", "1"},
	{"net/ipv4/vs/expire_nodest_conn", "1"},
	{"net/ipv4/vs/expire_quiescent_template", "1"},
}

func writeProcSys(path, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0o644)
}

// ensureSysctls sets the sysctls once, best effort: a read-only or missing
// one is logged, never fatal.
func (p *Proxier) ensureSysctls() {
	if p.sysctlsSet {
		return
	}
	p.sysctlsSet = true
	if p.sysctl == nil {
		p.log.Info("not setting IPVS sysctls in another network namespace")
		return
	}
	for _, kv := range sysctls {
		if err := p.sysctl(kv[0], kv[1]); err != nil {
			p.log.Warn("cannot set sysctl; masquerade and draining may not work as intended", "sysctl", kv[0], "value", kv[1], "err", err)
		}
	}
}
