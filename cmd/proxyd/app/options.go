// Package app is proxyd's command line: flags (with kube-proxy's names
// accepted too, so a manifest migrates by changing the image), an optional
// KubeProxyConfiguration file, validation, and the daemon's wiring.
package app

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/balance"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/proxier/ipvs"
)

// Modes proxyd can run in.
var Modes = []string{"nftables", "iptables", "ipvs"}

// Options is everything the command line says.
type Options struct {
	Mode               string
	Kubeconfig         string
	Master             string
	HostnameOverride   string
	SyncPeriod         time.Duration
	MinSyncPeriod      time.Duration
	MetricsBindAddress string
	HealthzBindAddress string
	Cleanup            bool
	ClusterCIDRs       []netip.Prefix
	MasqueradeAll      bool
	MasqueradeBit      int
	LocalhostNodePorts bool
	IPVSScheduler      string
	IPTablesBackend    string
	ProxyName          string
	ConfigFile         string
	ShowVersion        bool
	Profiling          bool
	KubeAPIQPS         float32
	KubeAPIBurst       int32
	InitOnly           bool
	WriteConfigTo      string
	// DetectLocalMode is --detect-local-mode (see detectLocal).
	DetectLocalMode string
	// Conntrack is --conntrack-tcp-timeout-* and --conntrack-udp-timeout*.
	Conntrack conntrack.Timeouts
	// NodePortAddresses and NodePortPrimary restrict NodePorts (see
	// proxier.Config).
	NodePortAddresses []netip.Prefix
	NodePortPrimary   bool
	// Balance configures the connection-balance collector; its Interval
	// 0 turns it off.
	Balance balance.Config

	nodePortAddressesFromConfig []string
}

// parseNodePortAddresses reads --nodeport-addresses. With none given,
// nftables mode pins NodePorts to the primary addresses and the others
// answer on all, as kube-proxy defaults them.
func (o *Options) parseNodePortAddresses(values []string) error {
	if len(values) == 0 {
		o.NodePortPrimary = o.Mode == "nftables"
		return nil
	}
	for _, v := range values {
		switch v = strings.TrimSpace(v); v {
		case "primary":
			o.NodePortPrimary = true
		case "all":
			o.NodePortAddresses = append(o.NodePortAddresses, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
		case "localhost":
			o.NodePortAddresses = append(o.NodePortAddresses, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
		default:
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return fmt.Errorf("--nodeport-addresses %q: want a CIDR, primary, localhost or all", v)
			}
			o.NodePortAddresses = append(o.NodePortAddresses, p.Masked())
		}
	}
	return nil
}

// ErrHelp is returned by Parse when --help was asked for.
var ErrHelp = pflag.ErrHelp

// Parse reads args into Options. It returns a one-line error for anything
// invalid; nothing is started.
func Parse(args []string) (*Options, error) {
	o := &Options{}
	fs := pflag.NewFlagSet("proxyd", pflag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	var clusterCIDR string
	fs.StringVar(&o.Mode, "mode", "iptables", "dataplane: "+strings.Join(Modes, ", ")+"; iptables by default, as kube-proxy on Linux")
	fs.StringVar(&o.Mode, "proxy-mode", "iptables", "alias of --mode (kube-proxy's name)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster config when empty")
	fs.StringVar(&o.Master, "master", "", "apiserver URL, overrides the kubeconfig's")
	fs.StringVar(&o.HostnameOverride, "hostname-override", "", "this node's name; the hostname when empty")
	fs.DurationVar(&o.SyncPeriod, "sync-period", 30*time.Second, "resync at least this often")
	fs.DurationVar(&o.SyncPeriod, "iptables-sync-period", 30*time.Second, "alias of --sync-period")
	fs.DurationVar(&o.SyncPeriod, "ipvs-sync-period", 30*time.Second, "alias of --sync-period")
	fs.DurationVar(&o.MinSyncPeriod, "min-sync-period", time.Second, "sync at most this often when objects change")
	fs.DurationVar(&o.MinSyncPeriod, "iptables-min-sync-period", time.Second, "alias of --min-sync-period")
	fs.DurationVar(&o.MinSyncPeriod, "ipvs-min-sync-period", time.Second, "alias of --min-sync-period")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", "127.0.0.1:10249", "host:port of /metrics; empty or port 0 disables it")
	fs.StringVar(&o.HealthzBindAddress, "healthz-bind-address", "0.0.0.0:10256", "host:port of /healthz and /livez; empty disables it")
	fs.BoolVar(&o.Cleanup, "cleanup", false, "remove every rule of every mode proxyd owns, then exit")
	fs.StringVar(&clusterCIDR, "cluster-cidr", "", "comma-separated Pod CIDRs; ClusterIP traffic from outside them is masqueraded")
	fs.BoolVar(&o.MasqueradeAll, "masquerade-all", false, "masquerade all traffic sent to ClusterIPs")
	fs.IntVar(&o.MasqueradeBit, "iptables-masquerade-bit", 14, "bit of the packet mark that requests masquerade (0-31)")
	fs.BoolVar(&o.LocalhostNodePorts, "iptables-localhost-nodeports", true, "iptables mode: IPv4 NodePorts answer on 127.0.0.1 too (sets route_localnet), as in kube-proxy")
	fs.StringVar(&o.IPTablesBackend, "iptables-backend", "auto", "iptables variant: auto (the one the node already uses), nft or legacy")
	fs.StringVar(&o.IPVSScheduler, "ipvs-scheduler", "rr", "IPVS scheduler: rr, lc, wrr, wlc, sh, dh, mh, sed, nq")
	fs.StringVar(&o.ProxyName, "service-proxy-name", "", "also program Services labelled service.kubernetes.io/service-proxy-name=NAME")
	fs.StringVar(&o.ConfigFile, "config", "", "a KubeProxyConfiguration file; flags given explicitly override it")
	fs.BoolVar(&o.ShowVersion, "version", false, "print the version and exit")
	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", 50, "QPS to the apiserver")
	fs.Int32Var(&o.KubeAPIBurst, "kube-api-burst", 100, "burst to the apiserver")
	fs.DurationVar(&o.Conntrack.TCPEstablished, "conntrack-tcp-timeout-established", conntrack.DefaultTimeouts.TCPEstablished, "idle timeout of established TCP connections in conntrack (0 leaves the kernel's)")
	fs.DurationVar(&o.Conntrack.TCPCloseWait, "conntrack-tcp-timeout-close-wait", conntrack.DefaultTimeouts.TCPCloseWait, "conntrack timeout of TCP connections in CLOSE_WAIT (0 leaves the kernel's)")
	fs.BoolVar(&o.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", false, "let conntrack accept out-of-window TCP packets (nf_conntrack_tcp_be_liberal)")
	fs.DurationVar(&o.Conntrack.UDP, "conntrack-udp-timeout", 0, "conntrack timeout of unreplied UDP flows (0 leaves the kernel's)")
	fs.DurationVar(&o.Conntrack.UDPStream, "conntrack-udp-timeout-stream", 0, "conntrack timeout of replied UDP flows (0 leaves the kernel's)")
	fs.StringVar(&o.DetectLocalMode, "detect-local-mode", "ClusterCIDR", "what makes traffic local (not masqueraded): ClusterCIDR (--cluster-cidr) or NodeCIDR (the Node's spec.podCIDRs); BridgeInterface and InterfaceNamePrefix fall back to ClusterCIDR")
	compatFlags(fs)
	var nodePortAddresses []string
	fs.StringSliceVar(&nodePortAddresses, "nodeport-addresses", nil,
		"addresses NodePorts answer on: CIDRs of node addresses, 'primary' (the node's primary address of each family) or 'all'; default primary in nftables mode, all otherwise, as in kube-proxy")
	fs.BoolVar(&o.InitOnly, "init-only", false, "do the node setup that needs full privileges (conntrack timeouts, route_localnet for localhost NodePorts), then exit")
	fs.StringVar(&o.WriteConfigTo, "write-config-to", "", "write the effective configuration as a KubeProxyConfiguration to this file and exit")
	fs.BoolVar(&o.Profiling, "profiling", false, "serve /debug/pprof on the metrics address, as kube-proxy does")
	fs.DurationVar(&o.Balance.Interval, "balance-interval", 30*time.Second, "how often the connection-balance collector walks the conntrack table; 0 turns it off")
	fs.DurationVar(&o.Balance.PinnedAfter, "balance-pinned-after", 5*time.Minute, "a Service is reported pinned when an endpoint ready this long holds no connection while most connections predate it")
	fs.BoolVar(&o.Balance.EndpointSeries, "balance-endpoint-metrics", false, "export established connections per endpoint for every Service (default: only the most imbalanced, see --balance-top-k)")
	fs.IntVar(&o.Balance.TopK, "balance-top-k", 5, "how many of the most imbalanced Services get per-endpoint connection series (0: none)")
	fs.DurationVar(&o.Balance.EventEvery, "balance-event-interval", 30*time.Minute, "least time between two ConnectionsPinned Events on one Service")

	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	for _, name := range []string{"v", "vmodule", "logtostderr", "alsologtostderr", "log_file", "stderrthreshold"} {
		if f := klogFlags.Lookup(name); f != nil {
			fs.AddGoFlag(f)
		}
	}
	if f := fs.Lookup("v"); f != nil {
		f.Shorthand = "v"
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.ConfigFile != "" {
		if err := applyConfigFile(o, &clusterCIDR, fs); err != nil {
			return nil, err
		}
	}
	if err := applyPortFlags(o, fs); err != nil {
		return nil, err
	}
	if o.nodePortAddressesFromConfig != nil && !fs.Changed("nodeport-addresses") {
		nodePortAddresses = o.nodePortAddressesFromConfig
	}
	o.nodePortAddressesFromConfig = nil
	if err := o.parseNodePortAddresses(nodePortAddresses); err != nil {
		return nil, err
	}
	var err error
	if o.ClusterCIDRs, err = parseCIDRs(clusterCIDR); err != nil {
		return nil, err
	}
	return o, o.Validate()
}

// Validate checks values that parse but make no sense.
func (o *Options) Validate() error {
	var errs []error
	if !contains(Modes, o.Mode) {
		errs = append(errs, fmt.Errorf("--mode %q: must be one of %s", o.Mode, strings.Join(Modes, ", ")))
	}
	if o.SyncPeriod <= 0 {
		errs = append(errs, fmt.Errorf("--sync-period %v: must be greater than 0", o.SyncPeriod))
	}
	if o.MinSyncPeriod < 0 {
		errs = append(errs, fmt.Errorf("--min-sync-period %v: must not be negative", o.MinSyncPeriod))
	}
	if o.SyncPeriod > 0 && o.MinSyncPeriod > o.SyncPeriod {
		errs = append(errs, fmt.Errorf("--min-sync-period %v: must not exceed --sync-period %v", o.MinSyncPeriod, o.SyncPeriod))
	}
	if o.Balance.Interval < 0 || o.Balance.PinnedAfter <= 0 || o.Balance.EventEvery <= 0 {
		errs = append(errs, errors.New("--balance-interval must not be negative, --balance-pinned-after and --balance-event-interval must be positive"))
	}
	if o.MasqueradeBit < 0 || o.MasqueradeBit > 31 {
		errs = append(errs, fmt.Errorf("--iptables-masquerade-bit %d: must be within 0-31", o.MasqueradeBit))
	}
	for name, addr := range map[string]string{"--metrics-bind-address": o.MetricsBindAddress, "--healthz-bind-address": o.HealthzBindAddress} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port", name, addr))
		}
	}
	if !contains(LocalModes, o.DetectLocalMode) {
		errs = append(errs, fmt.Errorf("--detect-local-mode %q: must be one of %s", o.DetectLocalMode, strings.Join(LocalModes, ", ")))
	}
	if !contains([]string{"auto", "nft", "legacy"}, o.IPTablesBackend) {
		errs = append(errs, fmt.Errorf("--iptables-backend %q: must be auto, nft or legacy", o.IPTablesBackend))
	}
	if o.Mode == "ipvs" {
		if _, err := ipvs.ValidateScheduler(o.IPVSScheduler); err != nil {
			errs = append(errs, fmt.Errorf("--ipvs-scheduler: %w", err))
		}
	}
	return errors.Join(errs...)
}

func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("--cluster-cidr %q: %v", part, err)
		}
		out = append(out, p.Masked())
	}
	if len(out) > 2 || (len(out) == 2 && out[0].Addr().Is4() == out[1].Addr().Is4()) {
		return nil, fmt.Errorf("--cluster-cidr %q: at most one CIDR per IP family", s)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
