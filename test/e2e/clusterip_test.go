//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/pkg/nft"
)

// dataplane is one way of running proxyd that every e2e assertion covers.
type dataplane struct {
	name string   // subtest name
	mode string   // --mode
	args []string // further flags
	list string   // shell command that lists what the kernel holds
}

var dataplanes = []dataplane{
	{name: "nftables", mode: "nftables", list: "nft list ruleset"},
	{name: "iptables-nft", mode: "iptables", args: []string{"--iptables-backend=nft"}, list: "iptables-nft-save; ip6tables-nft-save"},
	{name: "iptables-legacy", mode: "iptables", args: []string{"--iptables-backend=legacy"}, list: "iptables-legacy-save; ip6tables-legacy-save"},
}

// everything lists what every dataplane holds, for checks that nothing of
// proxyd's is left.
const everything = "nft list ruleset; iptables-nft-save; ip6tables-nft-save; iptables-legacy-save; ip6tables-legacy-save"

// ruleset returns what the kernel holds for dp, as an admin would list it.
func (e *env) ruleset(t *testing.T, list string) string {
	t.Helper()
	argv := []string{"sh", "-c", list}
	out, err := e.lab.Exec(context.Background(), e.lab.NodeNS, argv...)
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return out
}

func TestClusterIP(t *testing.T) {
	e := needEnv(t)
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) { e.clusterIPSuite(t, dp) })
	}
}

func (e *env) clusterIPSuite(t *testing.T, dp dataplane) {
	const vip = "10.96.0.10"
	ports := []svcPort{{"tcp", v1.ProtocolTCP, 80}, {"udp", v1.ProtocolUDP, 80}}
	target := []svcPort{{"tcp", v1.ProtocolTCP, 8080}, {"udp", v1.ProtocolUDP, 8080}}
	pods := e.lab.Pods[:3]
	all := []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}

	e.createService(t, "web", vip, nil, ports...)
	webSlice := e.createSlice(t, e.slice("web-1", "web", all, target...))
	e.createService(t, "headless", v1.ClusterIPNone, nil, ports...)
	e.createSlice(t, e.slice("headless-1", "headless", all, target...))
	e.createService(t, "other", "10.96.0.11", map[string]string{"service.kubernetes.io/service-proxy-name": "other"}, ports...)
	e.createSlice(t, e.slice("other-1", "other", all, target...))

	px := e.startProxyd(t, dp.mode, dp.args...)
	addr := vip + ":80"
	e.waitAnswers(t, "the VIP answers", addr, 1)

	t.Run("300 TCP connections and 300 UDP exchanges from the client and from the node reach all 3 Pods", func(t *testing.T) {
		for _, from := range []string{e.lab.ClientNS, e.lab.NodeNS} {
			for _, proto := range []string{"tcp", "udp"} {
				r := e.traffic(t, from, proto, addr, 300, 1)
				assertBalanced(t, proto+" from "+from, r, 300, podNames(pods), 0.20, 0.47)
			}
		}
	})

	t.Run("a TCP connection stays on one Pod for all its requests", func(t *testing.T) {
		r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 30, 20)
		if r.StickyViolations != 0 || r.Answered() != 30 {
			t.Fatalf("sticky violations %d, answered %d of 30: %v", r.StickyViolations, r.Answered(), r.Counts)
		}
	})

	t.Run("the headless Service gets no rules and its Pods are reached directly", func(t *testing.T) {
		rules := e.ruleset(t, dp.list)
		if strings.Contains(rules, "default/headless") {
			t.Errorf("headless Service is in the ruleset:\n%s", rules)
		}
		r := e.traffic(t, e.lab.ClientNS, "tcp", pods[0].IP+":8080", 20, 1)
		if r.Counts[pods[0].Name] != 20 {
			t.Errorf("direct connections to %s: %v %+v", pods[0].Name, r.Counts, r.Errors)
		}
	})

	t.Run("a Service for another proxy is not programmed", func(t *testing.T) {
		rules := e.ruleset(t, dp.list)
		if strings.Contains(rules, "default/other") || strings.Contains(rules, "10.96.0.11") {
			t.Errorf("service-proxy-name=other is in the ruleset:\n%s", rules)
		}
	})

	t.Run("metrics show syncs and healthz answers 200", func(t *testing.T) {
		// The kernel has the rules before the sync that wrote them is
		// counted (the other family and conntrack come first), so wait.
		var body string
		e.eventually(t, 10*time.Second, "a completed sync is counted", func() error {
			body = e.metrics(t)
			if n := syncs(body); n <= 0 {
				return errorf("kubeproxy_sync_proxy_rules_duration_seconds_count = %d, want > 0", n)
			}
			return nil
		})
		for _, name := range []string{"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_network_programming_duration_seconds_bucket",
			"kubeproxy_sync_proxy_rules_endpoint_changes_total", "kubeproxy_sync_proxy_rules_service_changes_pending"} {
			if !strings.Contains(body, name) {
				t.Errorf("/metrics lacks %s", name)
			}
		}
		code, _, err := e.lab.HTTPGet(context.Background(), e.lab.NodeNS, "http://127.0.0.1:10256/healthz")
		if err != nil || code != 200 {
			t.Errorf("/healthz: %d %v", code, err)
		}
	})

	if dp.mode == "nftables" {
		t.Run("nft lists the table readably and as the golden text", func(t *testing.T) {
			e.assertNftGolden(t)
		})
	}

	t.Run("an endpoint marked not ready gets no new connections within 2 s", func(t *testing.T) {
		es := webSlice.DeepCopy()
		es.Endpoints[2].Conditions.Ready = ptr(false)
		es.Endpoints[2].Conditions.Serving = ptr(false)
		es.Annotations[v1.EndpointsLastChangeTriggerTime] = time.Now().UTC().Format(time.RFC3339Nano)
		start := time.Now()
		if _, err := e.cs.DiscoveryV1().EndpointSlices("default").Update(context.Background(), es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		took := e.eventually(t, 2*time.Second, "pod3 leaves the rotation", func() error {
			r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 20, 1)
			if r.Counts[pods[2].Name] > 0 {
				return errorf("pod3 still answers: %v", r.Counts)
			}
			return nil
		})
		time.Sleep(time.Until(start.Add(2 * time.Second)))
		r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 100, 1)
		assertBalanced(t, "after pod3 not ready", r, 100, podNames(pods[:2]), 0.30, 0.70)
		t.Logf("pod3 left the rotation %v after the update", took.Round(time.Millisecond))
	})

	t.Run("a deleted Service's VIP refuses connections within 2 s", func(t *testing.T) {
		if err := e.cs.CoreV1().Services("default").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		took := e.eventually(t, 2*time.Second, "the VIP refuses", func() error {
			r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 5, 1)
			if r.Errors.Refused != 5 {
				return errorf("not refused: %v %+v %v", r.Counts, r.Errors, r.ErrorSamples)
			}
			return nil
		})
		r := e.traffic(t, e.lab.NodeNS, "tcp", addr, 5, 1)
		if r.Errors.Refused != 5 {
			t.Errorf("from the node: %v %+v", r.Counts, r.Errors)
		}
		t.Logf("VIP refused %v after the delete", took.Round(time.Millisecond))
	})

	t.Run("proxyd --cleanup leaves nothing behind", func(t *testing.T) {
		px.stop(t)
		out, err := e.lab.Exec(context.Background(), e.lab.NodeNS, os.Getenv("PROXYD_BIN"), "--cleanup")
		if err != nil {
			t.Fatalf("proxyd --cleanup: %v\n%s", err, out)
		}
		rules := e.ruleset(t, everything)
		for _, s := range []string{"proxyd", "PROXYD"} {
			if strings.Contains(rules, s) {
				t.Errorf("%q left after --cleanup:\n%s", s, rules)
			}
		}
	})
}

func (e *env) assertNftGolden(t *testing.T) {
	out, err := e.lab.Exec(context.Background(), e.lab.NodeNS, "nft", "list", "table", "ip", "proxyd")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"unknown", "invalid", "0x0 ", "[", "__set", "__map"} {
		if strings.Contains(out, bad) {
			t.Errorf("listing contains %q:\n%s", bad, out)
		}
	}
	got := nft.CanonicalListing(out)
	golden := filepath.Join("testdata", "nftables-clusterip.golden")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if got != string(want) {
		t.Errorf("nft list table ip proxyd differs from %s\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
}
