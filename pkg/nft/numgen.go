package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Numgen matches when a fresh random number below Mod equals Value:
// "numgen random mod 3 0", true for one packet in three. Endpoint i of n
// preceded by Numgen{Mod: n-i} makes a uniform choice, as iptables'
// statistic match does.
type Numgen struct{ Mod, Value uint32 }

func (s Numgen) text(Family) string { return fmt.Sprintf("numgen random mod %d %d", s.Mod, s.Value) }

func (s Numgen) compile(c *compiler) error {
	if s.Mod == 0 || s.Value >= s.Mod {
		return fmt.Errorf("value %d out of range mod %d", s.Value, s.Mod)
	}
	c.emit(&expr.Numgen{Register: unix.NFT_REG_1, Modulus: s.Mod, Type: unix.NFT_NG_RANDOM},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: ne32(s.Value)})
	return nil
}

func (s Numgen) eval(x *exec) (step, error) {
	if x.fl.Choose(s.Mod, s.Value, s.Value+1) != s.Value {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if len(ex) < 2 {
			return nil
		}
		n, ok := ex[0].(*expr.Numgen)
		cmp, ok2 := ex[1].(*expr.Cmp)
		if !ok || !ok2 || n.Type != unix.NFT_NG_RANDOM {
			return nil
		}
		return Numgen{Mod: n.Modulus, Value: leU32(cmp.Data)}
	})
}
