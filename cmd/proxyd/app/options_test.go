package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/pkg/conntrack"
)

func TestParseAcceptsKubeProxyNames(t *testing.T) {
	o, err := Parse([]string{"--proxy-mode=iptables", "--iptables-sync-period=10s", "--iptables-min-sync-period=2s",
		"--cluster-cidr=10.244.0.0/16,fd00:10:244::/56", "--conntrack-max-per-core=0", "-v=2",
		"--kube-api-qps=20", "--feature-gates=A=true", "--nodeport-addresses=primary", "--oom-score-adj=-999"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Mode != "iptables" || o.SyncPeriod != 10*time.Second || o.MinSyncPeriod != 2*time.Second || len(o.ClusterCIDRs) != 2 {
		t.Errorf("options = %+v", o)
	}
}

func TestParseRejectsBadValuesWithOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"--mode=userspace"},
		{"--sync-period=0s"},
		{"--min-sync-period=1m", "--sync-period=30s"},
		{"--cluster-cidr=10.244.0.0/33"},
		{"--cluster-cidr=10.0.0.0/8,10.1.0.0/16"},
		{"--iptables-masquerade-bit=32"},
		{"--metrics-bind-address=nonsense"},
		{"--mode=ipvs", "--ipvs-scheduler=fastest"},
		{"--sync-period=soon"},
		{"stray-argument"},
	} {
		_, err := Parse(args)
		if err == nil {
			t.Errorf("%v: accepted", args)
			continue
		}
		if strings.Contains(oneLine(err), "\n") {
			t.Errorf("%v: error is not one line: %q", args, err)
		}
	}
}

func TestConfigFileFillsWhatFlagsLeaveOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16
hostnameOverride: node-a
nftables:
  syncPeriod: 45s
  minSyncPeriod: 3s
clientConnection:
  kubeconfig: /etc/kubeconfig
conntrack:
  tcpCloseWaitTimeout: 30m
  udpTimeout: 20s
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := Parse([]string{"--config", path, "--min-sync-period=500ms"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Mode != "nftables" || o.SyncPeriod != 45*time.Second || o.MinSyncPeriod != 500*time.Millisecond ||
		o.HostnameOverride != "node-a" || o.Kubeconfig != "/etc/kubeconfig" || len(o.ClusterCIDRs) != 1 ||
		o.Conntrack != (conntrack.Timeouts{TCPEstablished: 24 * time.Hour, TCPCloseWait: 30 * time.Minute, UDP: 20 * time.Second}) {
		t.Errorf("options = %+v", o)
	}
	if err := os.WriteFile(path, []byte("kind: KubeProxyConfiguration\nnosuchfield: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse([]string{"--config", path}); err == nil {
		t.Error("unknown config field accepted")
	}
}
