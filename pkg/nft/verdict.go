package nft

import (
	"github.com/google/nftables/expr"
)

// VerdictKind is what a verdict does.
type VerdictKind uint8

// The verdicts.
const (
	VerdictAccept VerdictKind = iota + 1
	VerdictDrop
	VerdictJump
	VerdictGoto
	VerdictReturn
)

// Verdict ends a rule: accept or drop the packet, or continue in another
// chain and come back (jump) or not (goto). It is also the data of a
// verdict map's element.
type Verdict struct {
	Kind  VerdictKind
	Chain string // for jump and goto
}

// The verdicts without a chain.
var (
	Accept = Verdict{Kind: VerdictAccept}
	Drop   = Verdict{Kind: VerdictDrop}
	Return = Verdict{Kind: VerdictReturn}
)

// Jump continues in chain c and comes back.
func Jump(c string) Verdict { return Verdict{Kind: VerdictJump, Chain: c} }

// Goto continues in chain c and does not come back.
func Goto(c string) Verdict { return Verdict{Kind: VerdictGoto, Chain: c} }

var verdictKinds = map[VerdictKind]expr.VerdictKind{
	VerdictAccept: expr.VerdictAccept,
	VerdictDrop:   expr.VerdictDrop,
	VerdictJump:   expr.VerdictJump,
	VerdictGoto:   expr.VerdictGoto,
	VerdictReturn: expr.VerdictReturn,
}

func (v Verdict) text(Family) string {
	switch v.Kind {
	case VerdictAccept:
		return "accept"
	case VerdictDrop:
		return "drop"
	case VerdictJump:
		return "jump " + v.Chain
	case VerdictGoto:
		return "goto " + v.Chain
	case VerdictReturn:
		return "return"
	}
	return "verdict?"
}

// expr is the verdict as the kernel stores it.
func (v Verdict) expr() (*expr.Verdict, bool) {
	k, ok := verdictKinds[v.Kind]
	if !ok || (v.Chain != "") != (v.Kind == VerdictJump || v.Kind == VerdictGoto) {
		return nil, false
	}
	return &expr.Verdict{Kind: k, Chain: v.Chain}, true
}

func verdictOf(e *expr.Verdict) (Verdict, bool) {
	for k, ek := range verdictKinds {
		if ek == e.Kind {
			return Verdict{Kind: k, Chain: e.Chain}, true
		}
	}
	return Verdict{}, false
}

func (v Verdict) compile(c *compiler) error {
	e, ok := v.expr()
	if !ok {
		return errBadVerdict
	}
	c.emit(e)
	return nil
}

func (v Verdict) eval(x *exec) (step, error) { return x.end(v) }

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		if e, ok := ex[0].(*expr.Verdict); ok {
			if v, ok := verdictOf(e); ok {
				return v
			}
		}
		return nil
	})
}
