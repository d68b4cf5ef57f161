package ipvs

import (
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// The tracer runs the rules IPVS mode writes, so a wrong expression in
// them breaks the spec, as it would break the node. (The tracer this
// replaced read the Ruleset's fields and never saw the expressions: with
// the cluster-CIDR comparison of mark-masq flipped in the old nftrules.go,
// its flow spec still passed.)
func TestFlowSpecFailsOnAWrongExpressionInTheFilterTable(t *testing.T) {
	for _, c := range []struct {
		name   string
		chain  string
		mutate func(r nft.Rule)
		breaks string // a case that must now fail
	}{
		{"the cluster-CIDR match of mark-masq flipped", markChain,
			func(r nft.Rule) {
				if a, ok := r[1].(nft.AddrIn); ok {
					a.Not = !a.Not
					r[1] = a
				}
			},
			"TCP from the node itself to a ClusterIP reaches any of its three Pods"},
		{"the source-range lookup of the guard not negated", "guard-prerouting",
			func(r nft.Rule) {
				if l, ok := r[2].(nft.Lookup); ok && strings.HasPrefix(l.Set, "lb-sources") {
					l.Not = false
					r[2] = l
				}
			},
			"a load-balancer IP admits a source inside loadBalancerSourceRanges"},
		{"the masquerade mark tested for equality with zero", "postrouting",
			func(r nft.Rule) {
				if m, ok := r[0].(nft.Mark); ok {
					m.Not = false
					r[0] = m
				}
			},
			"a NodePort from outside reaches the Service's Pods, masqueraded"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tab := Render(flowspec.State(), "rr")
			broken := RenderNetfilter(tab, flowspec.Config()).Table()
			for _, rule := range broken.Chain(c.chain).Rules {
				c.mutate(rule)
			}
			flowspec.WantFailure(t, TracerOver(tab, broken), c.breaks)
		})
	}
}
