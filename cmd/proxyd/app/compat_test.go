package app

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// Every Linux flag of kube-proxy v1.37 is taken, so a kube-proxy manifest
// starts unchanged.
func TestEveryKubeProxyFlagIsAccepted(t *testing.T) {
	args := []string{"--bind-address=0.0.0.0", "--bind-address-hard-fail", "--cleanup=false", "--cluster-cidr=10.244.0.0/16",
		"--config-sync-period=15m", "--conntrack-max-per-core=32768", "--conntrack-min=131072", "--conntrack-tcp-be-liberal",
		"--conntrack-tcp-timeout-close-wait=1h", "--conntrack-tcp-timeout-established=24h", "--conntrack-udp-timeout=30s",
		"--conntrack-udp-timeout-stream=2m", "--detect-local-mode=ClusterCIDR", "--feature-gates=A=true",
		"--healthz-bind-address=0.0.0.0:10256", "--hostname-override=n1", "--iptables-localhost-nodeports=false",
		"--iptables-masquerade-bit=14", "--iptables-min-sync-period=1s", "--iptables-sync-period=30s",
		"--ipvs-exclude-cidrs=10.0.0.0/8", "--ipvs-min-sync-period=1s", "--ipvs-scheduler=rr", "--ipvs-strict-arp",
		"--ipvs-sync-period=30s", "--ipvs-tcp-timeout=0s", "--ipvs-tcpfin-timeout=0s", "--ipvs-udp-timeout=0s",
		"--kube-api-burst=10", "--kube-api-content-type=application/vnd.kubernetes.protobuf", "--kube-api-qps=5",
		"--kubeconfig=/k", "--masquerade-all=false", "--master=https://a:6443", "--metrics-bind-address=127.0.0.1:10249",
		"--nodeport-addresses=primary", "--oom-score-adj=-999", "--pod-bridge-interface=", "--pod-interface-name-prefix=",
		"--profiling=false", "--proxy-mode=iptables", "--proxy-port-range=", "--show-hidden-metrics-for-version=",
		"--init-only=false", "--v=2", "--vmodule="}
	if _, err := Parse(args); err != nil {
		t.Fatal(err)
	}
}

func TestDeprecatedPortFlagsSetTheBindAddresses(t *testing.T) {
	o, err := Parse([]string{"--healthz-port=20256", "--metrics-port=0"})
	if err != nil {
		t.Fatal(err)
	}
	if o.HealthzBindAddress != "0.0.0.0:20256" || o.MetricsBindAddress != "" {
		t.Errorf("healthz %q, metrics %q; want 0.0.0.0:20256 and disabled", o.HealthzBindAddress, o.MetricsBindAddress)
	}
	if _, err := Parse([]string{"--healthz-port=70000"}); err == nil {
		t.Error("--healthz-port=70000 accepted")
	}
}

// What --write-config-to writes, --config reads back as the same options.
func TestWriteConfigToRoundTrips(t *testing.T) {
	want, err := Parse([]string{"--proxy-mode=iptables", "--iptables-sync-period=10s", "--iptables-min-sync-period=2s",
		"--cluster-cidr=10.244.0.0/16,fd00:10:244::/56", "--masquerade-all", "--iptables-masquerade-bit=12",
		"--iptables-localhost-nodeports=false", "--hostname-override=n1", "--kubeconfig=/etc/k", "--kube-api-qps=7",
		"--metrics-bind-address=0.0.0.0:10249", "--profiling", "--nodeport-addresses=primary,192.0.2.0/24",
		"--conntrack-tcp-timeout-established=2h", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout-stream=3m"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := writeConfig(want, path); err != nil {
		t.Fatal(err)
	}
	got, err := Parse([]string{"--config=" + path})
	if err != nil {
		t.Fatal(err)
	}
	got.ConfigFile = ""
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read back:\n got %+v\nwant %+v", got, want)
	}
	if want.SyncPeriod != 10*time.Second {
		t.Errorf("sync period %v", want.SyncPeriod)
	}
}

func TestNodePortAddressesDefaultAsKubeProxy(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		primary bool
		ranges  int
	}{
		{[]string{"--mode=nftables"}, true, 0},
		{[]string{"--mode=iptables"}, false, 0},
		{[]string{"--mode=ipvs"}, false, 0},
		{[]string{"--mode=nftables", "--nodeport-addresses=all"}, false, 2},
		{[]string{"--mode=iptables", "--nodeport-addresses=primary,192.0.2.0/24"}, true, 1},
	} {
		o, err := Parse(tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if o.NodePortPrimary != tc.primary || len(o.NodePortAddresses) != tc.ranges {
			t.Errorf("%v: primary %v, ranges %v; want %v and %d ranges", tc.args, o.NodePortPrimary, o.NodePortAddresses, tc.primary, tc.ranges)
		}
	}
	if _, err := Parse([]string{"--nodeport-addresses=10.0.0.0/33"}); err == nil {
		t.Error("a bad CIDR was accepted")
	}
}

// With no mode given, proxyd runs kube-proxy's default, iptables, with its
// NodePorts on every address and on localhost, from flags and from a
// KubeProxyConfiguration that leaves mode empty alike.
func TestTheDefaultModeIsKubeProxys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{nil, {"--config=" + path}} {
		o, err := Parse(args)
		if err != nil {
			t.Fatal(err)
		}
		cfg := o.proxierConfig()
		if o.Mode != "iptables" || o.NodePortPrimary || !cfg.LocalhostNodePorts {
			t.Errorf("%v: mode %q, primary %v, localhost %v; want iptables on every address and localhost", args, o.Mode, o.NodePortPrimary, cfg.LocalhostNodePorts)
		}
	}
}
