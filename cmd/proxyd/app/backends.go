package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/internal/nfacct"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/iptables"
	"github.com/proxyd/proxyd/pkg/proxier/ipvs"
	"github.com/proxyd/proxyd/pkg/proxier/nftables"
)

// routeLocalnet is the sysctl localhost NodePorts need, in proxyd's own
// network namespace.
const routeLocalnet = "/proc/sys/net/ipv4/conf/all/route_localnet"

// prepareNode sets what the mode needs of the node's sysctls: packets to
// 127.0.0.1 are only routed off the loopback device with route_localnet,
// which localhost NodePorts need, as kube-proxy sets it. A value already
// set (by the manifest's privileged init container) is left alone: the
// unprivileged container cannot write it, and need not.
func prepareNode(o *Options) error {
	if o.Mode != "iptables" || !o.LocalhostNodePorts {
		return nil
	}
	if sysctlSet(strings.TrimPrefix(routeLocalnet, procSys+"/")) {
		return nil
	}
	if err := os.WriteFile(routeLocalnet, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("set %s: %w", routeLocalnet, err)
	}
	return nil
}

// procSys is where the kernel's sysctls of proxyd's network namespace are.
const procSys = "/proc/sys"

// tuneConntrack sets kube-proxy's conntrack timeouts in proxyd's network
// namespace, writing only the values that differ.
func tuneConntrack(o *Options) error {
	changed, err := o.Conntrack.Apply(procSys)
	if len(changed) > 0 {
		klog.InfoS("Set conntrack timeouts", "sysctls", changed)
	}
	return err
}

// proxierConfig is the node-wide behaviour every backend shares.
func (o *Options) proxierConfig() proxier.Config {
	return proxier.Config{
		ClusterCIDRs:       o.ClusterCIDRs,
		MasqueradeAll:      o.MasqueradeAll,
		MasqueradeMark:     1 << uint(o.MasqueradeBit),
		LocalhostNodePorts: o.LocalhostNodePorts && o.Mode == "iptables",
		NodePortAddresses:  o.NodePortAddresses,
		NodePortPrimary:    o.NodePortPrimary,
		// Read after tuneConntrack, which may have set it.
		ConntrackTCPLiberal: sysctlSet("net/netfilter/nf_conntrack_tcp_be_liberal"),
	}
}

// ProxierConfig is what the backends render with under these options, for
// tools that render what proxyd should hold (test/soak's final check).
func (o *Options) ProxierConfig() proxier.Config { return o.proxierConfig() }

// sysctlSet reports whether the sysctl at path (under /proc/sys) is
// readable and not 0.
func sysctlSet(path string) bool {
	b, err := os.ReadFile(procSys + "/" + path)
	return err == nil && strings.TrimSpace(string(b)) != "0"
}

// newBackend builds the Backend of mode; the error says what the node lacks.
func newBackend(o *Options, mode string) (proxier.Backend, error) {
	cfg := o.proxierConfig()
	switch mode {
	case "nftables":
		return nftables.New(cfg)
	case "ipvs":
		return ipvs.New(cfg, ipvs.WithScheduler(o.IPVSScheduler))
	case "iptables":
		opts := []iptables.Option{iptables.WithCounters(nfacct.Ensure)}
		if o.IPTablesBackend != "auto" {
			opts = append(opts, iptables.WithVariant(iptables.Variant(o.IPTablesBackend)))
		}
		if err := prepareNode(o); err != nil {
			klog.ErrorS(err, "NodePorts will not answer on 127.0.0.1")
			cfg.LocalhostNodePorts = false
		}
		return iptables.New(cfg, opts...)
	}
	return nil, fmt.Errorf("--mode %s is not available in this build yet", mode)
}

// CleanupAll removes the rules of every mode except keep ("" removes all):
// at start that clears what an earlier run in another mode left behind, and
// with --cleanup it removes everything. A mode the kernel cannot do has
// nothing to clean and is skipped.
func CleanupAll(ctx context.Context, o *Options, keep string) error {
	var errs []error
	for _, mode := range Modes {
		if mode == keep {
			continue
		}
		if mode == "iptables" {
			// Rules may sit in either variant (iptables-nft or legacy).
			for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
				b, err := iptables.New(o.proxierConfig(), iptables.WithVariant(v))
				if err != nil {
					klog.V(2).InfoS("Nothing to clean for iptables variant", "variant", v, "reason", err)
					continue
				}
				if err := b.Cleanup(ctx); err != nil {
					errs = append(errs, fmt.Errorf("clean up iptables-%s rules: %w", v, err))
				}
			}
			continue
		}
		if mode == "ipvs" {
			// Works without ip_vs too: it still removes proxyd's
			// interface and netfilter table.
			if err := ipvs.Cleanup(ctx); err != nil {
				errs = append(errs, fmt.Errorf("clean up ipvs rules: %w", err))
			}
			continue
		}
		b, err := newBackend(o, mode)
		if err != nil {
			klog.V(2).InfoS("Nothing to clean for mode", "mode", mode, "reason", err)
			continue
		}
		if err := b.Cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean up %s rules: %w", mode, err))
		}
		if c, ok := b.(interface{ Close() error }); ok {
			_ = c.Close()
		}
	}
	return errors.Join(errs...)
}
