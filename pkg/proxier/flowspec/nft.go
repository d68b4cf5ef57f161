package flowspec

import (
	"github.com/proxyd/proxyd/pkg/nft"
)

// NFT is the spec's Tracer over an nftables tracer (pkg/nft): the one
// every mode that writes nftables uses, on what it rendered or what it
// read back from the kernel.
type NFT struct{ T *nft.Tracer }

// Trace implements Tracer.
func (a NFT) Trace(p Packet, rnd func(n uint32) uint32) Result {
	r, err := a.T.Trace(nft.Packet{Src: p.Src, Dst: p.Dst, Proto: p.Proto.Number(), FromNode: p.FromNode}, rnd)
	if err != nil {
		return Result{Err: err}
	}
	switch {
	case r.Fate == nft.Rejected:
		return Result{Verdict: Reject}
	case r.Fate == nft.Dropped:
		return Result{Verdict: Drop}
	case r.DNAT:
		return Result{Verdict: DNAT, Endpoint: r.Packet.Dst, Masquerade: r.Masquerade}
	}
	return Result{Verdict: Untouched, Masquerade: r.Masquerade}
}
