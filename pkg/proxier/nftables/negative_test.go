package nftables

import (
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// The tracer takes hooks and priorities from the table, so a base chain
// moved to the wrong place breaks the spec, as it would break the node.
// (The tracer this replaced walked the chains by name and passed both.)
func TestFlowSpecFailsOnAWrongBaseChainPriority(t *testing.T) {
	for _, c := range []struct {
		name, chain string
		move        func(b *nft.Base)
		breaks      string // a case that must now fail
	}{
		{"the post-DNAT reject of the node's traffic moved before DNAT", chainFilterPostDNAT,
			func(b *nft.Base) { b.Priority = prioFilter },
			"TCP from the node itself to a ClusterIP reaches any of its three Pods"},
		{"the forward reject moved to prerouting, before DNAT", chainFilterForward,
			func(b *nft.Base) { b.Hook = nft.Prerouting },
			"TCP from a client to a ClusterIP reaches any of its three Pods"},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := flowspec.State()
			v4, v6 := Render(st, flowspec.Config(), model.IPv4), Render(st, flowspec.Config(), model.IPv6)
			c.move(v4.Chain(c.chain).Base)
			flowspec.WantFailure(t, newTracer(v4, v6), c.breaks)
		})
	}
}
