//go:build e2e

package e2e

import (
	"fmt"
	"regexp"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

var (
	localhostAcceptedRE = regexp.MustCompile(`(?m)^kubeproxy_iptables_localhost_nodeports_accepted_packets_total (\S+)`)
	invalidDroppedRE    = regexp.MustCompile(`(?m)^kubeproxy_iptables_ct_state_invalid_dropped_packets_total (\S+)`)
)

// TestLocalhostNodePortPacketsAreCounted is the upstream e2e test "should
// update metric for tracking accepted packets destined for localhost
// nodeports" with real packets: in iptables mode, connections to
// 127.0.0.1:NodePort from the node raise
// kubeproxy_iptables_localhost_nodeports_accepted_packets_total, which is
// exported (with the INVALID-drop counter) before any such packet, as
// kube-proxy's iptables mode does. nftables mode exports neither, as
// kube-proxy's does not.
func TestLocalhostNodePortPacketsAreCounted(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:1]
	np := e.createNodePort(t, "np-counted", "10.96.0.33", nil, svcPort{"tcp", v1.ProtocolTCP, 80})
	e.createSlice(t, e.slice("np-counted-1", "np-counted", []endpoint{{pods[0], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	addr := fmt.Sprintf("127.0.0.1:%d", np.Spec.Ports[0].NodePort)
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			e.startDataplane(t, dp)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("%s:\n%s", dp.list, e.ruleset(t, dp.list))
				}
			})
			body := e.metrics(t)
			if dp.mode != "iptables" {
				if localhostAcceptedRE.MatchString(body) || invalidDroppedRE.MatchString(body) {
					t.Errorf("%s mode exports kube-proxy's iptables nfacct metrics", dp.mode)
				}
				return
			}
			if !localhostAcceptedRE.MatchString(body) || !invalidDroppedRE.MatchString(body) {
				t.Fatalf("/metrics lacks kubeproxy_iptables_localhost_nodeports_accepted_packets_total or kubeproxy_iptables_ct_state_invalid_dropped_packets_total")
			}
			before := metricValue(localhostAcceptedRE, body)
			e.eventually(t, 10*time.Second, "10 connections from the node to "+addr+" are answered", func() error {
				if r := e.traffic(t, e.lab.NodeNS, "tcp", addr, 10, 1); r.Answered() != 10 {
					return fmt.Errorf("%v %+v", r.Counts, r.Errors)
				}
				return nil
			})
			after := metricValue(localhostAcceptedRE, e.metrics(t))
			t.Logf("kubeproxy_iptables_localhost_nodeports_accepted_packets_total %v before, %v after 10 connections", before, after)
			if after < before+10 {
				t.Errorf("kubeproxy_iptables_localhost_nodeports_accepted_packets_total went from %v to %v over 10 connections to %s", before, after, addr)
			}
		})
	}
}
