package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
)

// Masquerade rewrites the source to the outgoing interface's address and
// ends the rule: "masquerade", "masquerade fully-random".
type Masquerade struct{ FullyRandom bool }

func (s Masquerade) text(Family) string {
	if s.FullyRandom {
		return "masquerade fully-random"
	}
	return "masquerade"
}

func (s Masquerade) compile(c *compiler) error {
	c.emit(&expr.Masq{FullyRandom: s.FullyRandom})
	return nil
}

func (s Masquerade) eval(x *exec) (step, error) {
	if !x.natChain || x.hook != Postrouting {
		return 0, fmt.Errorf("masquerade outside a NAT chain of postrouting")
	}
	x.fl.masq, x.fl.snatBound = true, true
	return x.end(Accept)
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if m, ok := ex[0].(*expr.Masq); ok {
			return Masquerade{FullyRandom: m.FullyRandom}
		}
		return nil
	})
}
