package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// MarkOp is how SetMark combines the packet mark with its value.
type MarkOp uint8

// The mark operations.
const (
	MarkOr  MarkOp = iota + 1 // set bits
	MarkXor                   // flip bits
	MarkAnd                   // keep only bits
)

// SetMark rewrites the packet mark from itself and Value:
// "meta mark set meta mark | 0x00004000" (also ^ and &).
type SetMark struct {
	Op    MarkOp
	Value uint32
}

var markOps = map[MarkOp]string{MarkOr: "|", MarkXor: "^", MarkAnd: "&"}

func (s SetMark) text(Family) string {
	return fmt.Sprintf("meta mark set meta mark %s 0x%08x", markOps[s.Op], s.Value)
}

// maskXor is the bitwise expression's mask and xor for s; a value that
// leaves the mark as it is has no form nft would print back.
func (s SetMark) maskXor() (mask, xor uint32, err error) {
	switch {
	case s.Op == MarkOr && s.Value != 0:
		return ^s.Value, s.Value, nil
	case s.Op == MarkXor && s.Value != 0:
		return 0xffffffff, s.Value, nil
	case s.Op == MarkAnd && s.Value != 0xffffffff:
		return s.Value, 0, nil
	}
	return 0, 0, fmt.Errorf("%s changes nothing", s.text(0))
}

func (s SetMark) compile(c *compiler) error {
	mask, xor, err := s.maskXor()
	if err != nil {
		return err
	}
	c.emit(&expr.Meta{Key: expr.MetaKeyMARK, Register: unix.NFT_REG_1},
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4, Mask: ne32(mask), Xor: ne32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: unix.NFT_REG_1})
	return nil
}

func (s SetMark) eval(x *exec) (step, error) {
	mask, xor, err := s.maskXor()
	if err != nil {
		return 0, err
	}
	x.fl.mark = x.fl.mark&mask ^ xor
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		mask, xor, next, ok := maskedMark(ex)
		if set, isSet := next.(*expr.Meta); !ok || !isSet || !set.SourceRegister {
			return nil
		}
		switch {
		case mask == 0xffffffff:
			return SetMark{Op: MarkXor, Value: xor}
		case xor == 0:
			return SetMark{Op: MarkAnd, Value: mask}
		case mask == ^xor:
			return SetMark{Op: MarkOr, Value: xor}
		}
		return nil
	})
}
