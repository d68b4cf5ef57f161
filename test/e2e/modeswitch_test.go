//go:build e2e

package e2e

import (
	"context"
	"os"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// Restarting proxyd in another mode removes what the previous mode wrote,
// as kube-proxy cleans up the other modes, so only one dataplane acts on a
// packet; traffic keeps working through every switch.
func TestModeSwitchLeavesOnlyTheCurrentModesRules(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	e.createService(t, "switch", "10.96.0.20", nil, svcPort{"tcp", v1.ProtocolTCP, 80})
	e.createSlice(t, e.slice("switch-1", "switch", []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	t.Cleanup(func() { _, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, os.Getenv("PROXYD_BIN"), "--cleanup") })

	steps := []struct {
		dp        dataplane
		must      string // in the current mode's listing
		mustNot   []string
		mustNotIn string // listing where the other modes' rules would be
	}{
		{dataplanes[0], "table ip proxyd", []string{"PROXYD"}, "iptables-nft-save; iptables-legacy-save"},
		{dataplanes[1], ":PROXYD-SERVICES", []string{"table ip proxyd", "table ip6 proxyd"}, "nft list tables"},
		{dataplanes[0], "table ip proxyd", []string{"PROXYD"}, "iptables-nft-save; iptables-legacy-save"},
		{dataplanes[2], ":PROXYD-SERVICES", []string{"table ip proxyd", "PROXYD-SERVICES"}, "nft list tables; iptables-nft-save"},
	}
	for i, st := range steps {
		px := e.startProxyd(t, st.dp.mode, st.dp.args...)
		e.waitAnswers(t, st.dp.name+": the VIP answers", "10.96.0.20:80", 20)
		if got := e.ruleset(t, st.dp.list); !strings.Contains(got, st.must) {
			t.Errorf("step %d (%s): %q missing from its own listing:\n%s", i, st.dp.name, st.must, got)
		}
		other := e.ruleset(t, st.mustNotIn)
		for _, bad := range st.mustNot {
			if strings.Contains(other, bad) {
				t.Errorf("step %d (%s): %q from another mode is still in the kernel:\n%s", i, st.dp.name, bad, other)
			}
		}
		px.stop(t)
	}
}
