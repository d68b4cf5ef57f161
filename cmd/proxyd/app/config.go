package app

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// applyConfigFile fills o from a KubeProxyConfiguration; a flag given on the
// command line keeps its value.
func applyConfigFile(o *Options, clusterCIDR *string, fs *pflag.FlagSet) error {
	data, err := os.ReadFile(o.ConfigFile)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var c kpconfig.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return fmt.Errorf("--config %s: %w", o.ConfigFile, err)
	}
	if c.Kind != "" && c.Kind != "KubeProxyConfiguration" {
		return fmt.Errorf("--config %s: kind %q, want KubeProxyConfiguration", o.ConfigFile, c.Kind)
	}
	set := func(flagNames []string, apply func()) {
		for _, n := range flagNames {
			if fs.Changed(n) {
				return
			}
		}
		apply()
	}
	if c.Mode != "" {
		set([]string{"mode", "proxy-mode"}, func() { o.Mode = string(c.Mode) })
	}
	if c.ClientConnection.Kubeconfig != "" {
		set([]string{"kubeconfig"}, func() { o.Kubeconfig = c.ClientConnection.Kubeconfig })
	}
	if len(c.NodePortAddresses) > 0 {
		o.nodePortAddressesFromConfig = c.NodePortAddresses
	}
	if c.ClientConnection.QPS != 0 {
		set([]string{"kube-api-qps"}, func() { o.KubeAPIQPS = c.ClientConnection.QPS })
	}
	if c.ClientConnection.Burst != 0 {
		set([]string{"kube-api-burst"}, func() { o.KubeAPIBurst = c.ClientConnection.Burst })
	}
	if c.HostnameOverride != "" {
		set([]string{"hostname-override"}, func() { o.HostnameOverride = c.HostnameOverride })
	}
	if c.MetricsBindAddress != "" {
		set([]string{"metrics-bind-address"}, func() { o.MetricsBindAddress = c.MetricsBindAddress })
	}
	if c.HealthzBindAddress != "" {
		set([]string{"healthz-bind-address"}, func() { o.HealthzBindAddress = c.HealthzBindAddress })
	}
	if c.EnableProfiling {
		set([]string{"profiling"}, func() { o.Profiling = true })
	}
	if c.DetectLocalMode != "" {
		set([]string{"detect-local-mode"}, func() { o.DetectLocalMode = string(c.DetectLocalMode) })
	}
	if c.ClusterCIDR != "" {
		set([]string{"cluster-cidr"}, func() { *clusterCIDR = c.ClusterCIDR })
	}
	// The mode's own section supplies the periods, as in kube-proxy.
	var sync, minSync int64
	var masqAll bool
	var masqBit *int32
	switch o.Mode {
	case "iptables":
		sync, minSync = int64(c.IPTables.SyncPeriod.Duration), int64(c.IPTables.MinSyncPeriod.Duration)
		masqAll, masqBit = c.IPTables.MasqueradeAll, c.IPTables.MasqueradeBit
	case "ipvs":
		sync, minSync = int64(c.IPVS.SyncPeriod.Duration), int64(c.IPVS.MinSyncPeriod.Duration)
		masqAll, masqBit = c.IPTables.MasqueradeAll, c.IPTables.MasqueradeBit
		if c.IPVS.Scheduler != "" {
			set([]string{"ipvs-scheduler"}, func() { o.IPVSScheduler = c.IPVS.Scheduler })
		}
	default:
		sync, minSync = int64(c.NFTables.SyncPeriod.Duration), int64(c.NFTables.MinSyncPeriod.Duration)
		masqAll, masqBit = c.NFTables.MasqueradeAll, c.NFTables.MasqueradeBit
	}
	periodFlags := []string{"sync-period", "iptables-sync-period", "ipvs-sync-period"}
	minFlags := []string{"min-sync-period", "iptables-min-sync-period", "ipvs-min-sync-period"}
	if sync > 0 {
		set(periodFlags, func() { o.SyncPeriod = time.Duration(sync) })
	}
	if minSync > 0 {
		set(minFlags, func() { o.MinSyncPeriod = time.Duration(minSync) })
	}
	if masqAll {
		set([]string{"masquerade-all"}, func() { o.MasqueradeAll = true })
	}
	if masqBit != nil {
		set([]string{"iptables-masquerade-bit"}, func() { o.MasqueradeBit = int(*masqBit) })
	}
	applyConntrackConfig(o, c.Conntrack, set)
	if lh := c.IPTables.LocalhostNodePorts; lh != nil {
		set([]string{"iptables-localhost-nodeports"}, func() { o.LocalhostNodePorts = *lh })
	}
	return nil
}

// applyConntrackConfig takes the conntrack section's timeouts, unless
// their flags were given.
func applyConntrackConfig(o *Options, c kpconfig.KubeProxyConntrackConfiguration, set func([]string, func())) {
	durations := []struct {
		flag string
		from *metav1.Duration
		to   *time.Duration
	}{
		{"conntrack-tcp-timeout-established", c.TCPEstablishedTimeout, &o.Conntrack.TCPEstablished},
		{"conntrack-tcp-timeout-close-wait", c.TCPCloseWaitTimeout, &o.Conntrack.TCPCloseWait},
		{"conntrack-udp-timeout", &c.UDPTimeout, &o.Conntrack.UDP},
		{"conntrack-udp-timeout-stream", &c.UDPStreamTimeout, &o.Conntrack.UDPStream},
	}
	for _, d := range durations {
		if d.from != nil {
			set([]string{d.flag}, func() { *d.to = d.from.Duration })
		}
	}
	if c.TCPBeLiberal {
		set([]string{"conntrack-tcp-be-liberal"}, func() { o.Conntrack.TCPBeLiberal = true })
	}
}
