package nft

import (
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Proto matches the transport protocol: "meta l4proto tcp".
type Proto struct{ Proto uint8 }

func (s Proto) text(Family) string { return "meta l4proto " + ProtoName(s.Proto) }

func (s Proto) compile(c *compiler) error {
	c.emit(&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: unix.NFT_REG_1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{s.Proto}})
	return nil
}

func (s Proto) eval(x *exec) (step, error) {
	if x.fl.Proto != s.Proto {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if p, ok := protoMatch(ex); ok {
			return Proto{Proto: p}
		}
		return nil
	})
}

// protoMatch reads the protocol of a "meta l4proto" match at the start of ex.
func protoMatch(ex []expr.Any) (uint8, bool) {
	if len(ex) < 2 {
		return 0, false
	}
	if f, ok := fieldOf(ex[0]); !ok || f != MetaL4Proto {
		return 0, false
	}
	if c, ok := ex[1].(*expr.Cmp); ok && c.Op == expr.CmpOpEq && len(c.Data) == 1 {
		return c.Data[0], true
	}
	return 0, false
}
