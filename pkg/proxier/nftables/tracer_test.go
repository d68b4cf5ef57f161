package nftables

import (
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// newTracer traces the spec's packets through tables the way the spec's
// node would run them: pkg/nft's tracer, which takes hooks and priorities
// from the tables and remembers affinity across packets.
func newTracer(tables ...*nft.Table) flowspec.Tracer {
	return flowspec.NFT{T: nft.NewTracer(flowspec.NodeLocal, tables)}
}
