package nft

import (
	"fmt"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// CtState matches connections in any of the states in Bits (the kernel's
// NF_CT_STATE bits, e.g. CtNew): "ct state new".
type CtState struct{ Bits uint32 }

// CtStatus matches connections with any of the status bits in Bits (the
// kernel's IPS_* bits, e.g. CtDNAT): "ct status dnat".
type CtStatus struct{ Bits uint32 }

// Conntrack state and status bits.
const (
	CtNew  uint32 = expr.CtStateBitNEW
	CtDNAT uint32 = 0x20 // IPS_DST_NAT
)

var (
	ctStateNames  = []string{0: "invalid", 1: "established", 2: "related", 3: "new", 6: "untracked"}
	ctStatusNames = []string{0: "expected", 1: "seen-reply", 2: "assured", 3: "confirmed", 4: "snat", 5: "dnat", 9: "dying"}
)

// bitsText prints bits as nft does: known names in bit order.
func bitsText(bits uint32, names []string) string {
	var out []string
	for i := range 32 {
		if bits&(1<<i) == 0 {
			continue
		}
		if i < len(names) && names[i] != "" {
			out = append(out, names[i])
		} else {
			out = append(out, fmt.Sprintf("0x%x", 1<<i))
		}
	}
	return strings.Join(out, ",")
}

func (s CtState) text(Family) string  { return "ct state " + bitsText(s.Bits, ctStateNames) }
func (s CtStatus) text(Family) string { return "ct status " + bitsText(s.Bits, ctStatusNames) }

func ctBits(c *compiler, key expr.CtKey, bits uint32) error {
	if bits == 0 {
		return fmt.Errorf("no bits to match")
	}
	c.emit(&expr.Ct{Key: key, Register: unix.NFT_REG_1},
		&expr.Bitwise{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Len: 4, Mask: ne32(bits), Xor: ne32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: unix.NFT_REG_1, Data: ne32(0)})
	return nil
}

func (s CtState) compile(c *compiler) error  { return ctBits(c, expr.CtKeySTATE, s.Bits) }
func (s CtStatus) compile(c *compiler) error { return ctBits(c, expr.CtKeySTATUS, s.Bits) }

// Every traced packet opens a new connection.
func (s CtState) eval(*exec) (step, error) {
	if s.Bits&CtNew == 0 {
		return stepMiss, nil
	}
	return stepNext, nil
}

// A traced connection's status has dnat once a rule rewrote its
// destination; no other bit is modelled.
func (s CtStatus) eval(x *exec) (step, error) {
	if s.Bits&CtDNAT == 0 || !x.fl.ctDNAT {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if len(ex) < 3 {
			return nil
		}
		ct, ok := ex[0].(*expr.Ct)
		bw, ok2 := ex[1].(*expr.Bitwise)
		if !ok || !ok2 || len(bw.Mask) != 4 {
			return nil
		}
		bits := leU32(bw.Mask)
		switch ct.Key {
		case expr.CtKeySTATE:
			return CtState{Bits: bits}
		case expr.CtKeySTATUS:
			return CtStatus{Bits: bits}
		}
		return nil
	})
}
