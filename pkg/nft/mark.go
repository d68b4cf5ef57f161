package nft

import (
	"fmt"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Mark matches the packet mark's Mask bits against Value (with Not: any
// other value): "meta mark & 0x00004000 == 0x00004000",
// "meta mark & 0x00004000 != 0x00000000".
type Mark struct {
	Mask, Value uint32
	Not         bool
}

func (s Mark) text(Family) string {
	op := "=="
	if s.Not {
		op = "!="
	}
	return fmt.Sprintf("meta mark & 0x%08x %s 0x%08x", s.Mask, op, s.Value)
}

func (s Mark) compile(c *compiler) error {
	if s.Value&^s.Mask != 0 {
		return fmt.Errorf("value 0x%08x has bits outside mask 0x%08x", s.Value, s.Mask)
	}
	op := expr.CmpOpEq
	if s.Not {
		op = expr.CmpOpNeq
	}
	c.emit(&expr.Meta{Key: expr.MetaKeyMARK, Register: unix.NFT_REG_1},
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4, Mask: ne32(s.Mask), Xor: ne32(0)},
		&expr.Cmp{Op: op, Register: unix.NFT_REG_1, Data: ne32(s.Value)})
	return nil
}

func (s Mark) eval(x *exec) (step, error) {
	if (x.fl.mark&s.Mask == s.Value) == s.Not {
		return stepMiss, nil
	}
	return stepNext, nil
}

func leU32(b []byte) uint32 {
	if len(b) != 4 {
		return 0
	}
	return binaryutil.NativeEndian.Uint32(b)
}

// maskedMark reads a load of the mark and a bitwise operation on it from
// the start of ex: the mask and xor, and what follows.
func maskedMark(ex []expr.Any) (mask, xor uint32, next expr.Any, ok bool) {
	if len(ex) < 3 {
		return 0, 0, nil, false
	}
	m, ok := ex[0].(*expr.Meta)
	bw, ok2 := ex[1].(*expr.Bitwise)
	if !ok || !ok2 || m.Key != expr.MetaKeyMARK || m.SourceRegister {
		return 0, 0, nil, false
	}
	return leU32(bw.Mask), leU32(bw.Xor), ex[2], true
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		mask, _, next, ok := maskedMark(ex)
		if cmp, isCmp := next.(*expr.Cmp); ok && isCmp {
			return Mark{Mask: mask, Value: leU32(cmp.Data), Not: cmp.Op == expr.CmpOpNeq}
		}
		return nil
	})
}
