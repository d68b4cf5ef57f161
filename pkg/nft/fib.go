package nft

import (
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// FibLocal matches packets whose destination (with Source: whose source)
// is an address of this node: "fib daddr type local".
type FibLocal struct{ Source bool }

func (s FibLocal) text(Family) string {
	if s.Source {
		return "fib saddr type local"
	}
	return "fib daddr type local"
}

func (s FibLocal) compile(c *compiler) error {
	c.emit(&expr.Fib{Register: unix.NFT_REG_1, ResultADDRTYPE: true, FlagDADDR: !s.Source, FlagSADDR: s.Source},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: ne32(unix.RTN_LOCAL)})
	return nil
}

func (s FibLocal) eval(x *exec) (step, error) {
	a := x.fl.Dst.Addr()
	if s.Source {
		a = x.fl.Src
	}
	if !x.t.local(a) {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if f, ok := ex[0].(*expr.Fib); ok {
			return FibLocal{Source: f.FlagSADDR}
		}
		return nil
	})
}
