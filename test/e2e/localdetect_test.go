//go:build e2e

package e2e

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// With --detect-local-mode=NodeCIDR, traffic is local when it comes from
// the Node's spec.podCIDRs (the lab's: 10.244.1.0/24, fd00:10:244:1::/64)
// instead of --cluster-cidr: only sources outside them are masqueraded.
func TestDetectLocalModeNodeCIDR(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	e.createService(t, "local", "10.96.0.46", nil, svcPort{"tcp", v1.ProtocolTCP, 80})
	e.createSlice(t, e.slice("local-1", "local", []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	want := map[string][2]string{
		"nftables":     {"ip saddr != 10.244.1.0/24", "ip saddr != 10.244.0.0/16"},
		"iptables-nft": {"! -s 10.244.1.0/24", "! -s 10.244.0.0/16"},
	}
	for _, dp := range dataplanes[:2] {
		t.Run(dp.name, func(t *testing.T) {
			dp.args = append(append([]string(nil), dp.args...), "--detect-local-mode=NodeCIDR")
			e.startDataplane(t, dp)
			e.waitAnswers(t, "the VIP answers", "10.96.0.46:80", 1)
			list := dp.list
			if dp.name == "iptables-nft" {
				list = "iptables-nft-save -t nat"
			}
			rules := e.ruleset(t, list)
			if !strings.Contains(rules, want[dp.name][0]) || strings.Contains(rules, want[dp.name][1]) {
				t.Errorf("the masquerade rule should test the node's pod CIDR (%q), not the cluster CIDR (%q):\n%s",
					want[dp.name][0], want[dp.name][1], rules)
			}
			r := e.traffic(t, e.lab.ClientNS, "tcp", "10.96.0.46:80", 60, 1)
			assertBalanced(t, "ClusterIP from the client", r, 60, podNames(pods), 0.15, 0.55)
		})
	}
}
