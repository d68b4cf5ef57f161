package nft

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// randStmt draws one statement of kind k valid in a table of family f;
// ip is the IP family its address statements use (IP or IP6).
func randStmt(rng *rand.Rand, k int, f, ip Family) Stmt {
	addrField := func() Field {
		if rng.IntN(2) == 0 {
			return Saddr(ip)
		}
		return Daddr(ip)
	}
	key := func() []Field {
		all := []Field{Daddr(ip), MetaL4Proto, THDport, Saddr(ip)}
		n := 1 + rng.IntN(len(all))
		start := rng.IntN(len(all) - n + 1)
		return append([]Field(nil), all[start:start+n]...)
	}
	prefix := func() netip.Prefix {
		var a netip.Addr
		if ip == IP {
			a = netip.AddrFrom4([4]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		} else {
			var b [16]byte
			for i := range b {
				b[i] = byte(rng.IntN(256))
			}
			a = netip.AddrFrom16(b)
		}
		return netip.PrefixFrom(a, 1+rng.IntN(a.BitLen())).Masked()
	}
	target := func() netip.AddrPort {
		return netip.AddrPortFrom(prefix().Addr(), uint16(rng.IntN(65536)))
	}
	protos := []uint8{6, 17, 132}
	switch k {
	case 0:
		return Lookup{Key: key(), Set: "s", Not: rng.IntN(2) == 0}
	case 1:
		return Vmap{Key: key(), Map: "m"}
	case 2:
		return AddrIn{Field: addrField(), Prefix: prefix(), Not: rng.IntN(2) == 0}
	case 3:
		return Proto{Proto: protos[rng.IntN(3)]}
	case 4:
		return DPort{Proto: protos[rng.IntN(3)], Port: uint16(rng.IntN(65536))}
	case 5:
		return FibLocal{Source: rng.IntN(2) == 0}
	case 6:
		return CtState{Bits: 1 + uint32(rng.IntN(127))}
	case 7:
		return CtStatus{Bits: 1 + uint32(rng.IntN(1023))}
	case 8:
		m := 1 + rng.Uint32()
		return Mark{Mask: m, Value: m & rng.Uint32(), Not: rng.IntN(2) == 0}
	case 9:
		ops := []MarkOp{MarkOr, MarkXor, MarkAnd}
		v := 1 + rng.Uint32N(0xfffffffe)
		return SetMark{Op: ops[rng.IntN(3)], Value: v}
	case 10:
		m := 1 + rng.Uint32N(1000)
		return Numgen{Mod: m, Value: rng.Uint32N(m)}
	case 11:
		return Update{Key: key(), Set: "d", Timeout: time.Duration(rng.IntN(3)) * time.Hour}
	case 12:
		return DNAT{To: target()}
	case 13:
		return Masquerade{FullyRandom: rng.IntN(2) == 0}
	case 14:
		if f == INet && rng.IntN(2) == 0 {
			return Reject{Family: ip}
		}
		return Reject{}
	}
	if k == 15 {
		return DNATMap{Family: ip, Mod: 1 + rng.Uint32N(1<<16), Map: "eps"}
	}
	vs := []Verdict{Accept, Drop, Return, Jump("c"), Goto("d")}
	return vs[rng.IntN(len(vs))]
}

const stmtKinds = 17

// Every statement kind, in every family, decompiles to itself, alone and
// after any other statements (which change what the compiler emits for
// it: an inet table checks the network family once a rule).
func TestDecompileInvertsCompile(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	for _, f := range []Family{IP, IP6, INet} {
		ips := []Family{f}
		if f == INet {
			ips = []Family{IP, IP6}
		}
		for _, ip := range ips {
			for k := range stmtKinds {
				for range 200 {
					var r Rule
					for range rng.IntN(3) {
						r = append(r, randStmt(rng, rng.IntN(stmtKinds-1), f, ip))
					}
					r = append(r, randStmt(rng, k, f, ip))
					ex, err := CompileRule(f, r)
					if err != nil {
						t.Fatalf("%s: compile %q: %v", f, r.Text(f), err)
					}
					back, err := DecompileRule(f, ex)
					if err != nil {
						t.Fatalf("%s: decompile %q: %v", f, r.Text(f), err)
					}
					if !reflect.DeepEqual(back, r) {
						t.Fatalf("%s: %q decompiled to %q\n%#v\n%#v", f, r.Text(f), back.Text(f), r, back)
					}
				}
			}
		}
	}
}

func TestDecompileNamesWhatItDoesNotKnow(t *testing.T) {
	load := &expr.Payload{DestRegister: unix.NFT_REG_1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
	for _, c := range []struct {
		name string
		ex   []expr.Any
		want string
	}{
		{"an expression proxyd never writes", []expr.Any{&expr.Counter{}}, "expression 0 (counter"},
		{"a load nothing reads", []expr.Any{load}, "expression 0 (payload"},
		{"a comparison nft writes but proxyd does not", []expr.Any{load, &expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: []byte{10, 0, 0, 1}}}, "expression 0 (payload"},
		{"a lookup from another register", []expr.Any{load, &expr.Lookup{SourceRegister: unix.NFT_REG32_05, SetName: "s"}}, "expression 0 (payload"},
		{"an unknown statement after a known one", []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}, &expr.Log{}}, "expression 1 (log"},
		{"a mark set that changes nothing", []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(0xffffffff), Xor: ne32(0)}, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}}, "expression 0 (meta"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := DecompileRule(IP, c.ex)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %q, %v; want an error containing %q", r.Text(IP), err, c.want)
			}
		})
	}
}
