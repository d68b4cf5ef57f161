//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// Conntrack keeps sending a flow where its first packet went. These cases
// reuse one client source port, so every exchange after the first follows
// the same conntrack entry, and check that proxyd forgets the entries its
// rules no longer send anywhere, and only those.
func TestConntrackForgetsFlowsTheRulesNoLongerSend(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	const vip = "10.96.0.45"
	e.createService(t, "ct", vip, nil, svcPort{"tcp", v1.ProtocolTCP, 80}, svcPort{"udp", v1.ProtocolUDP, 53})
	ports := []svcPort{{"tcp", v1.ProtocolTCP, 8080}, {"udp", v1.ProtocolUDP, 8080}}
	slice := e.createSlice(t, e.slice("ct-1", "ct", []endpoint{{pods[0], false}, {pods[1], false}, {pods[2], false}}, ports...))
	setReady := func(t *testing.T, ready ...bool) {
		t.Helper()
		for i := range slice.Endpoints {
			slice.Endpoints[i].Conditions.Ready, slice.Endpoints[i].Conditions.Serving = ptr(ready[i]), ptr(ready[i])
		}
		out, err := e.cs.DiscoveryV1().EndpointSlices("default").Update(context.Background(), slice, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice = out
	}
	for i, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			setReady(t, false, false, false)
			px := e.startDataplane(t, dp)
			t.Cleanup(func() { _, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, "conntrack", "-F") })
			// Source ports below the ephemeral range, different per
			// dataplane so no entry of an earlier one is met.
			base := 20000 + 100*i
			tcp, udp := vip+":80", vip+":53"
			e.eventually(t, 10*time.Second, "the Service without endpoints refuses", func() error {
				if got := e.exchangeFrom(t, "tcp", tcp, base+1); got != "refused" {
					return errorf("TCP from port %d: %s", base+1, got)
				}
				if got := e.exchangeFrom(t, "udp", udp, base+2); got != "refused" {
					return errorf("UDP from port %d: %s", base+2, got)
				}
				return nil
			})

			t.Run("a SYN and a UDP flow refused before the first endpoint are answered once it is ready", func(t *testing.T) {
				setReady(t, true, false, false)
				took := e.eventually(t, 5*time.Second, "the same source ports are answered", func() error {
					for _, c := range []struct {
						proto, addr string
						port        int
					}{{"tcp", tcp, base + 1}, {"udp", udp, base + 2}} {
						if got := e.exchangeFrom(t, c.proto, c.addr, c.port); got != pods[0].Name {
							return errorf("%s from port %d: %s, want %s", c.proto, c.port, got, pods[0].Name)
						}
					}
					return nil
				})
				t.Logf("answered %v after the update", took)
			})

			t.Run("a UDP flow whose endpoint stops serving moves to one that serves", func(t *testing.T) {
				if got := e.exchangeFrom(t, "udp", udp, base+3); got != pods[0].Name {
					t.Fatalf("UDP from port %d: %s, want %s", base+3, got, pods[0].Name)
				}
				setReady(t, false, true, false)
				took := e.eventually(t, 5*time.Second, "the flow reaches the serving endpoint", func() error {
					if got := e.exchangeFrom(t, "udp", udp, base+3); got != pods[1].Name {
						return errorf("UDP from port %d: %s, want %s", base+3, got, pods[1].Name)
					}
					return nil
				})
				t.Logf("moved %v after the update", took)
			})

			t.Run("a SYN sent to an endpoint that never answered is answered once that endpoint is gone", func(t *testing.T) {
				// The only endpoint is pod3:9999, where pod3's own netns
				// drops every SYN: the node's entry stays SYN_SENT.
				hole := e.lab.Pods[2]
				if _, err := e.lab.Exec(context.Background(), hole.NS, "sh", "-c", "nft add table ip blackhole && "+
					"nft add chain ip blackhole input '{ type filter hook input priority 0; }' && "+
					"nft add rule ip blackhole input tcp dport 9999 drop"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _, _ = e.lab.Exec(context.Background(), hole.NS, "nft", "delete", "table", "ip", "blackhole") })
				setReady(t, false, false, false)
				ghost := e.createSlice(t, e.slice(fmt.Sprintf("ct-hole-%d", i), "ct", []endpoint{{hole, true}}, svcPort{"tcp", v1.ProtocolTCP, 9999}))
				// Fresh source ports until the rules send there only: an
				// answered connection would leave base+4 in TIME_WAIT.
				e.eventually(t, 5*time.Second, "SYNs go unanswered", func() error {
					r, err := e.lab.TrafficWith(context.Background(), e.lab.ClientNS, lab.TrafficOptions{
						Proto: "tcp", Addr: tcp, Count: 1, Timeout: 300 * time.Millisecond})
					if err == nil && r.Errors.Timeout != 1 {
						err = errorf("%v %+v, want a timeout", r.Counts, r.Errors)
					}
					return err
				})
				if got := e.exchangeFrom(t, "tcp", tcp, base+4); got != "timeout" {
					t.Fatalf("TCP from port %d: %s, want a timeout", base+4, got)
				}
				if err := e.cs.DiscoveryV1().EndpointSlices("default").Delete(context.Background(), ghost.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				setReady(t, true, false, false)
				took := e.eventually(t, 5*time.Second, "the same source port is answered", func() error {
					if got := e.exchangeFrom(t, "tcp", tcp, base+4); got != e.lab.Pods[0].Name {
						return errorf("TCP from port %d: %s, want %s", base+4, got, e.lab.Pods[0].Name)
					}
					return nil
				})
				t.Logf("answered %v after the update", took)
			})

			t.Run("UDP flows to serving endpoints stay where they are across a restart", func(t *testing.T) {
				setReady(t, true, true, true)
				e.waitServing(t, udp, len(pods))
				before := map[int]string{}
				for p := base + 10; p < base+16; p++ {
					before[p] = e.exchangeFrom(t, "udp", udp, p)
				}
				e.restartProxyd(t, px, dp)
				for p, want := range before {
					if got := e.exchangeFrom(t, "udp", udp, p); got != want {
						t.Errorf("UDP from port %d: %s before the restart, %s after", p, want, got)
					}
				}
				t.Logf("flows before and after the restart: %v", before)
			})
		})
	}
}

// exchangeFrom sends one request from sourcePort and returns the name that
// answered it, or what went wrong ("refused", "timeout", "other").
func (e *env) exchangeFrom(t *testing.T, proto, addr string, sourcePort int) string {
	t.Helper()
	r, err := e.lab.TrafficWith(context.Background(), e.lab.ClientNS, lab.TrafficOptions{
		Proto: proto, Addr: addr, Count: 1, Parallel: 1, SourcePort: sourcePort, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for name := range r.Counts {
		return name
	}
	for kind, sample := range r.ErrorSamples {
		if kind == "other" {
			return kind + " (" + sample + ")"
		}
		return kind
	}
	return fmt.Sprintf("%+v", r.Errors)
}

// waitServing waits until n Pods answer fresh UDP sockets to addr, so the
// rules of the latest update are in place.
func (e *env) waitServing(t *testing.T, addr string, n int) {
	t.Helper()
	e.eventually(t, 5*time.Second, fmt.Sprintf("%d Pods answer %s", n, addr), func() error {
		r := e.traffic(t, e.lab.ClientNS, "udp", addr, 30, 1)
		if len(r.Counts) != n {
			return errorf("30 sockets reached %v", r.Counts)
		}
		return nil
	})
}

// restartProxyd replaces px by a new proxyd in the same mode and waits for
// its first sync, conntrack clean-up included.
func (e *env) restartProxyd(t *testing.T, px *proxyd, dp dataplane) {
	t.Helper()
	px.stop(t)
	e.startProxyd(t, dp.mode, dp.args...)
	e.eventually(t, 10*time.Second, "the new proxyd has synced", func() error {
		if n := syncs(e.metrics(t)); n <= 0 {
			return errorf("sync count %d", n)
		}
		return nil
	})
}

// proxyd sets kube-proxy's conntrack timeouts in its network namespace:
// the defaults (established 24 h, close-wait 1 h) and the ones asked for.
func TestConntrackTimeoutsAreKubeProxys(t *testing.T) {
	e := needEnv(t)
	names := []string{"nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait",
		"nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream", "nf_conntrack_tcp_be_liberal"}
	read := func() []string {
		var out []string
		for _, n := range names {
			v, err := e.lab.Exec(context.Background(), e.lab.NodeNS, "cat", "/proc/sys/net/netfilter/"+n)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, strings.TrimSpace(v))
		}
		return out
	}
	before := read()
	t.Cleanup(func() {
		for i, n := range names {
			_, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, "sh", "-c", "echo "+before[i]+" > /proc/sys/net/netfilter/"+n)
		}
	})
	e.startDataplane(t, dataplane{name: "nftables", mode: "nftables", args: []string{"--conntrack-udp-timeout=45s", "--conntrack-tcp-be-liberal"}})
	got := read()
	want := []string{"86400", "3600", "45", before[3], "1"}
	if !slices.Equal(got, want) {
		t.Errorf("%v = %v, want %v (before: %v)", names, got, want, before)
	}
}
