package metrics_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func TestNoLocalEndpointsCountsWhatKubeProxyCounts(t *testing.T) {
	m := metrics.New("nftables")
	m.SetNoLocalEndpoints(flowspec.State())
	// The spec has one internalTrafficPolicy Local port served only
	// elsewhere (localremote) and one externalTrafficPolicy Local port
	// without a local endpoint (npremote).
	for _, c := range []struct {
		policy, family string
		want           float64
	}{{"internal", "IPv4", 1}, {"external", "IPv4", 1}, {"internal", "IPv6", 0}, {"external", "IPv6", 0}} {
		if got := value(t, m.NoLocalEndpoints.WithLabelValues(c.policy, c.family)); got != c.want {
			t.Errorf("%s %s = %v, want %v", c.policy, c.family, got, c.want)
		}
	}
	m.SetNoLocalEndpoints(&model.State{})
	if got := value(t, m.NoLocalEndpoints.WithLabelValues("internal", "IPv4")); got != 0 {
		t.Errorf("after the ports are gone: %v, want 0", got)
	}
}

func TestEveryModeCountsFailuresUnderAKubeProxyName(t *testing.T) {
	for mode, want := range map[string]string{
		"nftables": "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
		"iptables": "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
		// kube-proxy's ipvs mode registers only this failure counter.
		"ipvs": "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
	} {
		m := metrics.New(mode)
		m.SyncFailures.WithLabelValues("IPv4").Inc()
		families, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, f := range families {
			name := f.GetName()
			if strings.Contains(name, "failures_total") && !strings.Contains(name, "partial") && name != want {
				t.Errorf("%s mode exports %s, a failure counter kube-proxy does not have in that mode", mode, name)
			}
			found = found || name == want
		}
		if !found {
			t.Errorf("%s mode does not export %s", mode, want)
		}
	}
}

func value(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var pb dto.Metric
	if err := g.Write(&pb); err != nil {
		t.Fatal(err)
	}
	return pb.GetGauge().GetValue()
}

func TestNFAcctCountersAreExportedUnderKubeProxysNamesWhileReadable(t *testing.T) {
	m := metrics.New("iptables")
	counts := map[string]uint64{"lh": 7}
	m.CollectNFAcct("lh", "inv", func(name string) (uint64, error) {
		n, ok := counts[name]
		if !ok {
			return 0, errors.New("no such counter")
		}
		return n, nil
	})
	got := gather(t, m)
	if v, ok := got["kubeproxy_iptables_localhost_nodeports_accepted_packets_total"]; !ok || v != 7 {
		t.Errorf("localhost NodePorts: %v, %v; want 7", v, ok)
	}
	if _, ok := got["kubeproxy_iptables_ct_state_invalid_dropped_packets_total"]; ok {
		t.Error("a counter that cannot be read is exported")
	}
	counts["inv"] = 2
	if v := gather(t, m)["kubeproxy_iptables_ct_state_invalid_dropped_packets_total"]; v != 2 {
		t.Errorf("INVALID drops: %v, want 2 once the counter exists", v)
	}
}

// gather returns the value of every counter m's registry exports without
// labels.
func gather(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			if c := mt.GetCounter(); c != nil && len(mt.GetLabel()) == 0 {
				out[mf.GetName()] = c.GetValue()
			}
		}
	}
	return out
}
