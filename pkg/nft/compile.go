package nft

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Stmt is one statement of a rule. The statements are a closed set, one
// file each; every one knows its nft text, its bytecode, how to recognise
// that bytecode again, and what it does to a packet.
type Stmt interface {
	// text is the statement as nft prints it in a table of family f.
	text(f Family) string
	// compile appends the statement's expressions.
	compile(c *compiler) error
	// eval runs the statement on the packet x holds.
	eval(x *exec) (step, error)
}

// compiler turns the statements of one rule into expressions for a table
// of one family.
type compiler struct {
	family Family
	// guard is the IP family this rule already checked with meta nfproto
	// (inet tables only): later reads of that header need no check.
	guard Family
	out   []expr.Any
}

func (c *compiler) emit(e ...expr.Any) { c.out = append(c.out, e...) }

// needNetwork makes the rule go on only for packets of IP family f (IP or
// IP6) before it reads that header: in an inet table the first statement
// that does checks meta nfproto, as nft does; an ip or ip6 table sees only
// its own family.
func (c *compiler) needNetwork(f Family) error {
	switch c.family {
	case INet:
		if c.guard != f {
			c.emit(&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: unix.NFT_REG_1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: []byte{byte(f)}})
			c.guard = f
		}
		return nil
	case f:
		return nil
	}
	return fmt.Errorf("a table of family %s has no %s header", c.family, f)
}

// isGuard reports whether ex starts with the check needNetwork emits.
func isGuard(ex []expr.Any) bool {
	if len(ex) < 2 {
		return false
	}
	m, ok := ex[0].(*expr.Meta)
	cmp, ok2 := ex[1].(*expr.Cmp)
	return ok && ok2 && m.Key == expr.MetaKeyNFPROTO && !m.SourceRegister && cmp.Op == expr.CmpOpEq && len(cmp.Data) == 1
}

// CompileRule turns r into the expressions of a rule in a table of family f.
func CompileRule(f Family, r Rule) ([]expr.Any, error) {
	c := &compiler{family: f}
	for _, s := range r {
		if err := s.compile(c); err != nil {
			return nil, fmt.Errorf("%s: %w", s.text(f), err)
		}
	}
	return c.out, nil
}

// ne32 is v in host byte order, as registers hold marks, ct bits and the
// results of fib and numgen.
func ne32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// decoders propose the statement at the start of some expressions; each
// statement's file registers one. A proposal counts only if compiling it
// gives exactly those expressions again.
var decoders []func(f Family, ex []expr.Any) Stmt

func decodes(d func(f Family, ex []expr.Any) Stmt) { decoders = append(decoders, d) }

// DecompileRule turns the expressions of a rule in a table of family f back
// into statements. It accepts exactly what CompileRule emits: at each
// position every decoder may propose a statement, a proposal is compiled
// again in the same context and kept only if it reproduces the expressions
// byte for byte, and the longest one wins. Expressions no statement
// reproduces are an error that names the first of them.
func DecompileRule(f Family, ex []expr.Any) (Rule, error) {
	var r Rule
	guard := Family(0)
	for i := 0; i < len(ex); {
		var best Stmt
		var bestC *compiler
		for _, d := range decoders {
			s := d(f, ex[i:])
			if s == nil {
				continue
			}
			c := &compiler{family: f, guard: guard}
			if err := s.compile(c); err != nil || len(c.out) == 0 || len(c.out) > len(ex)-i || !sameExprs(f, c.out, ex[i:i+len(c.out)]) {
				continue
			}
			if bestC == nil || len(c.out) > len(bestC.out) {
				best, bestC = s, c
			}
		}
		if best == nil {
			return nil, fmt.Errorf("expression %d (%s) is not part of any statement proxyd writes", i, describe(f, ex[i]))
		}
		r = append(r, best)
		guard = bestC.guard
		i += len(bestC.out)
	}
	return r, nil
}

// sameExprs compares expressions by their netlink encoding, which is what
// the kernel keeps.
func sameExprs(f Family, a, b []expr.Any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, err1 := expr.Marshal(byte(f), canonical(a[i]))
		y, err2 := expr.Marshal(byte(f), canonical(b[i]))
		if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
			return false
		}
	}
	return true
}

// canonical drops what the kernel adds on its own when it dumps an
// expression: a NAT range's upper registers default to the lower ones, and
// a port register sets the "proto specified" flag.
func canonical(e expr.Any) expr.Any {
	if n, ok := e.(*expr.NAT); ok {
		c := *n
		if c.RegAddrMax == c.RegAddrMin {
			c.RegAddrMax = 0
		}
		if c.RegProtoMax == c.RegProtoMin {
			c.RegProtoMax = 0
		}
		c.Specified = c.Specified || c.RegProtoMin != 0
		return &c
	}
	return e
}

// describe names an expression for an error message.
func describe(f Family, e expr.Any) string {
	b, err := expr.Marshal(byte(f), e)
	name := fmt.Sprintf("%T", e)
	if err == nil {
		if i := bytes.IndexByte(b[4:], 0); i > 0 {
			name = string(b[4 : 4+i])
		}
	}
	return fmt.Sprintf("%s %+v", name, e)
}

var errBadVerdict = errors.New("a verdict needs a kind, and a chain exactly when it jumps or goes to one")
