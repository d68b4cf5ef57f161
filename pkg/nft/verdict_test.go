package nft

import "testing"

func TestVerdicts(t *testing.T) {
	// nft --debug=netlink add rule ip t c jump c (goto c, accept, drop)
	checkStmt(t, IP, Rule{Jump("c")}, "jump c", `[ immediate reg 0 jump -> c ]`)
	checkStmt(t, IP, Rule{Goto("c")}, "goto c", `[ immediate reg 0 goto -> c ]`)
	checkStmt(t, IP, Rule{Accept}, "accept", `[ immediate reg 0 accept ]`)
	checkStmt(t, IP, Rule{Drop}, "drop", `[ immediate reg 0 drop ]`)
	for _, v := range []Verdict{{}, {Kind: VerdictJump}, {Kind: VerdictAccept, Chain: "x"}} {
		if _, err := CompileRule(IP, Rule{v}); err == nil {
			t.Errorf("verdict %+v compiled", v)
		}
	}
}
