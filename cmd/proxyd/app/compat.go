package app

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// compatFlags are kube-proxy flags that proxyd takes so that a kube-proxy
// manifest starts unchanged, but that change nothing here: host-wide
// conntrack and IPVS timeouts are the node's business, and the rest
// configures features proxyd does not have (local-traffic detection by
// interface, strict ARP).
func compatFlags(fs *pflag.FlagSet) {
	for _, name := range []string{"conntrack-max-per-core", "conntrack-min", "oom-score-adj"} {
		fs.Int32(name, 0, "accepted for kube-proxy compatibility; ignored")
	}
	for _, name := range []string{"config-sync-period", "ipvs-tcp-timeout", "ipvs-tcpfin-timeout", "ipvs-udp-timeout"} {
		fs.Duration(name, 0, "accepted for kube-proxy compatibility; ignored")
	}
	for _, name := range []string{"bind-address", "kube-api-content-type", "feature-gates", "proxy-port-range",
		"pod-bridge-interface", "pod-interface-name-prefix", "show-hidden-metrics-for-version"} {
		fs.String(name, "", "accepted for kube-proxy compatibility; ignored")
	}
	for _, name := range []string{"bind-address-hard-fail", "ipvs-strict-arp"} {
		fs.Bool(name, false, "accepted for kube-proxy compatibility; ignored")
	}
	fs.StringSlice("ipvs-exclude-cidrs", nil, "accepted for kube-proxy compatibility; ignored")
	fs.Int32("healthz-port", 0, "deprecated kube-proxy flag: the port of --healthz-bind-address; 0 disables it")
	fs.Int32("metrics-port", 0, "deprecated kube-proxy flag: the port of --metrics-bind-address; 0 disables it")
}

// applyPortFlags applies kube-proxy's deprecated --healthz-port and
// --metrics-port, when given, to the bind addresses, as kube-proxy does.
func applyPortFlags(o *Options, fs *pflag.FlagSet) error {
	for _, p := range []struct {
		flag string
		addr *string
	}{{"healthz-port", &o.HealthzBindAddress}, {"metrics-port", &o.MetricsBindAddress}} {
		if !fs.Changed(p.flag) {
			continue
		}
		port, _ := fs.GetInt32(p.flag)
		if port < 0 || port > 65535 {
			return fmt.Errorf("--%s %d: must be within 0-65535", p.flag, port)
		}
		if port == 0 {
			*p.addr = ""
			continue
		}
		host, _, err := net.SplitHostPort(*p.addr)
		if err != nil {
			host = ""
		}
		*p.addr = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	return nil
}

// writeConfig writes the configuration o amounts to as a
// KubeProxyConfiguration (kube-proxy's --write-config-to), which --config
// reads back.
func writeConfig(o *Options, path string) error {
	c := kpconfig.KubeProxyConfiguration{
		TypeMeta:           metav1.TypeMeta{APIVersion: "kubeproxy.config.k8s.io/v1alpha1", Kind: "KubeProxyConfiguration"},
		Mode:               kpconfig.ProxyMode(o.Mode),
		HostnameOverride:   o.HostnameOverride,
		MetricsBindAddress: o.MetricsBindAddress,
		HealthzBindAddress: o.HealthzBindAddress,
		EnableProfiling:    o.Profiling,
		DetectLocalMode:    kpconfig.LocalMode(o.DetectLocalMode),
	}
	c.ClientConnection.Kubeconfig = o.Kubeconfig
	c.ClientConnection.QPS, c.ClientConnection.Burst = o.KubeAPIQPS, o.KubeAPIBurst
	for i, p := range o.ClusterCIDRs {
		if i > 0 {
			c.ClusterCIDR += ","
		}
		c.ClusterCIDR += p.String()
	}
	if o.NodePortPrimary {
		c.NodePortAddresses = append(c.NodePortAddresses, "primary")
	}
	for _, p := range o.NodePortAddresses {
		c.NodePortAddresses = append(c.NodePortAddresses, p.String())
	}
	bit := int32(o.MasqueradeBit)
	sync, minSync := metav1.Duration{Duration: o.SyncPeriod}, metav1.Duration{Duration: o.MinSyncPeriod}
	c.IPTables.SyncPeriod, c.IPTables.MinSyncPeriod = sync, minSync
	c.IPTables.MasqueradeAll, c.IPTables.MasqueradeBit = o.MasqueradeAll, &bit
	c.IPTables.LocalhostNodePorts = &o.LocalhostNodePorts
	c.NFTables.SyncPeriod, c.NFTables.MinSyncPeriod = sync, minSync
	c.NFTables.MasqueradeAll, c.NFTables.MasqueradeBit = o.MasqueradeAll, &bit
	c.IPVS.SyncPeriod, c.IPVS.MinSyncPeriod, c.IPVS.Scheduler = sync, minSync, o.IPVSScheduler
	ct := o.Conntrack
	c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: ct.TCPEstablished}
	c.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: ct.TCPCloseWait}
	c.Conntrack.TCPBeLiberal = ct.TCPBeLiberal
	c.Conntrack.UDPTimeout, c.Conntrack.UDPStreamTimeout = metav1.Duration{Duration: ct.UDP}, metav1.Duration{Duration: ct.UDPStream}
	out, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	return nil
}
