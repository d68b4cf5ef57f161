package nft

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// debugText prints expressions the way `nft --debug=netlink` (libnftnl)
// prints a rule's bytecode, one expression a line, so that each statement's
// test can hold nft's own output and compare.
func debugText(t *testing.T, f Family, ex []expr.Any) string {
	t.Helper()
	var lines []string
	for _, e := range ex {
		lines = append(lines, "[ "+debugExpr(t, f, e)+" ]")
	}
	return strings.Join(lines, "\n")
}

func words(b []byte) string {
	var out []string
	for i := 0; i < len(b); i += 4 {
		w := make([]byte, 4)
		copy(w, b[i:])
		out = append(out, fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(w)))
	}
	return strings.Join(out, " ")
}

var (
	metaKeys = map[expr.MetaKey]string{expr.MetaKeyL4PROTO: "l4proto", expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyMARK: "mark"}
	ctKeys   = map[expr.CtKey]string{expr.CtKeySTATE: "state", expr.CtKeySTATUS: "status"}
	bases    = map[expr.PayloadBase]string{expr.PayloadBaseLLHeader: "link", expr.PayloadBaseNetworkHeader: "network", expr.PayloadBaseTransportHeader: "transport"}
	cmpOps   = map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}
	verdicts = map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictJump: "jump", expr.VerdictGoto: "goto", expr.VerdictReturn: "return"}
)

func debugExpr(t *testing.T, f Family, e expr.Any) string {
	t.Helper()
	switch e := e.(type) {
	case *expr.Payload:
		return fmt.Sprintf("payload load %db @ %s header + %d => reg %d", e.Len, bases[e.Base], e.Offset, e.DestRegister)
	case *expr.Meta:
		if e.SourceRegister {
			return fmt.Sprintf("meta set %s with reg %d", metaKeys[e.Key], e.Register)
		}
		return fmt.Sprintf("meta load %s => reg %d", metaKeys[e.Key], e.Register)
	case *expr.Cmp:
		return fmt.Sprintf("cmp %s reg %d %s", cmpOps[e.Op], e.Register, words(e.Data))
	case *expr.Lookup:
		s := fmt.Sprintf("lookup reg %d set %s", e.SourceRegister, e.SetName)
		if e.IsDestRegSet {
			s += fmt.Sprintf(" dreg %d", e.DestRegister)
		}
		if e.Invert {
			s += " 0x1"
		}
		return s
	case *expr.Bitwise:
		return fmt.Sprintf("bitwise reg %d = ( reg %d & %s ) ^ %s", e.DestRegister, e.SourceRegister, words(e.Mask), words(e.Xor))
	case *expr.Fib:
		which := "daddr"
		if e.FlagSADDR {
			which = "saddr"
		}
		return fmt.Sprintf("fib %s type => reg %d", which, e.Register)
	case *expr.Dynset:
		s := fmt.Sprintf("dynset update reg_key %d set %s", e.SrcRegKey, e.SetName)
		if e.Timeout > 0 {
			s += fmt.Sprintf(" timeout %dms", e.Timeout.Milliseconds())
		}
		return s
	case *expr.Ct:
		return fmt.Sprintf("ct load %s => reg %d", ctKeys[e.Key], e.Register)
	case *expr.Masq:
		if e.FullyRandom {
			return "masq flags 0x10"
		}
		return "masq"
	case *expr.Reject:
		return fmt.Sprintf("reject type %d code %d", e.Type, e.Code)
	case *expr.Verdict:
		if e.Chain != "" {
			return fmt.Sprintf("immediate reg 0 %s -> %s", verdicts[e.Kind], e.Chain)
		}
		return "immediate reg 0 " + verdicts[e.Kind]
	case *expr.Immediate:
		return fmt.Sprintf("immediate reg %d %s", e.Register, words(e.Data))
	case *expr.Byteorder:
		op := "hton"
		if e.Op == expr.ByteorderNtoh {
			op = "ntoh"
		}
		return fmt.Sprintf("byteorder reg %d = %s(reg %d, %d, %d)", e.DestRegister, op, e.SourceRegister, e.Size, e.Len)
	case *expr.Numgen:
		return fmt.Sprintf("numgen reg %d = random mod %d", e.Register, e.Modulus)
	case *expr.NAT:
		fam := "ip"
		if e.Family == unix.NFPROTO_IPV6 {
			fam = "ip6"
		}
		s := fmt.Sprintf("nat dnat %s addr_min reg %d", fam, e.RegAddrMin)
		if e.RegProtoMin != 0 {
			s += fmt.Sprintf(" proto_min reg %d", e.RegProtoMin)
		}
		if e.Specified {
			s += " flags 0x2"
		}
		return s
	}
	t.Fatalf("no debug form for %T", e)
	return ""
}

// checkStmt checks that rule r of a table of family f prints as text and
// compiles to debug (nft's own bytecode for text, where the statement says
// so), and that the bytecode decompiles to r again.
func checkStmt(t *testing.T, f Family, r Rule, text, debug string) {
	t.Helper()
	if got := r.Text(f); got != text {
		t.Errorf("text %q, want %q", got, text)
	}
	ex, err := CompileRule(f, r)
	if err != nil {
		t.Fatalf("compile %s: %v", text, err)
	}
	if got := debugText(t, f, ex); got != strings.TrimSpace(debug) {
		t.Errorf("%s compiles to\n%s\nwant (nft --debug=netlink)\n%s", text, got, strings.TrimSpace(debug))
	}
	back, err := DecompileRule(f, ex)
	if err != nil {
		t.Fatalf("decompile %s: %v", text, err)
	}
	if back.Text(f) != text || len(back) != len(r) {
		t.Errorf("decompiled to %q (%d statements), want %q", back.Text(f), len(back), text)
	}
}
