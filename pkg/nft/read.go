package nft

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Attributes golang.org/x/sys/unix does not name.
const (
	attrChainFlags    = 0xa
	attrChainUserdata = 0xc
	attrSetDescConcat = 0x2
	attrSetFieldLen   = 0x1
	attrSetExpr       = 0x11
	attrSetExprs      = 0x12
	attrElemKeyEnd    = 0xa
	attrElemExprs     = 0xb
	setFlagConcat     = 0x80
	nfDrop            = 0 // NF_DROP
	nfAccept          = 1 // NF_ACCEPT
)

// Reader reads tables back from the kernel over netlink, into the types
// the rest of this package prints, compares and traces. It decodes every
// attribute itself and accepts only what proxyd writes: an expression the
// decompiler cannot place, an unknown set type or flag, a comment, is an
// error naming it, never skipped.
type Reader struct {
	c *netlink.Conn
}

// NewReader opens a netlink socket to nf_tables in the network namespace
// open at netnsFD (0: the caller's).
func NewReader(netnsFD int) (*Reader, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("open nf_tables netlink socket: %w", err)
	}
	return &Reader{c: c}, nil
}

// Close closes the socket.
func (r *Reader) Close() error { return r.c.Close() }

// Table reads table name of family f: chains with their hooks, priorities,
// types and policies and their rules decompiled, sets with their flags,
// types and elements (also those rules added to dynamic sets). It is nil,
// without error, when there is no such table. The table is read in several
// dumps; if another writer committed between them, it is read again.
func (r *Reader) Table(f Family, name string) (*Table, error) {
	for range 5 {
		before, err := r.generation()
		if err != nil {
			return nil, err
		}
		t, err := r.table(f, name)
		if err != nil {
			return nil, fmt.Errorf("read table %s %s: %w", f, name, err)
		}
		after, err := r.generation()
		if err != nil {
			return nil, err
		}
		if before == after {
			return t, nil
		}
	}
	return nil, fmt.Errorf("read table %s %s: the ruleset kept changing while it was read", f, name)
}

// Generation is the kernel's ruleset generation: every commit of any
// writer increments it.
func (r *Reader) Generation() (uint32, error) { return r.generation() }

func (r *Reader) generation() (uint32, error) {
	msgs, err := r.request(unix.NFT_MSG_GETGEN, 0, unix.NFPROTO_UNSPEC, nil)
	if err != nil {
		return 0, fmt.Errorf("read nftables generation: %w", err)
	}
	var gen uint32
	found := false
	for _, m := range msgs {
		if err := attrs(m.Data[4:], func(typ uint16, ad *netlink.AttributeDecoder) error {
			if typ == unix.NFTA_GEN_ID {
				gen, found = ad.Uint32(), true
			}
			return nil
		}); err != nil {
			return 0, fmt.Errorf("read nftables generation: %w", err)
		}
	}
	if !found {
		return 0, errors.New("the kernel sent no nftables generation")
	}
	return gen, nil
}

func (r *Reader) table(f Family, name string) (*Table, error) {
	msgs, err := r.request(unix.NFT_MSG_GETTABLE, 0, f, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: cstring(name)}})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if err := attrs(m.Data[4:], func(typ uint16, ad *netlink.AttributeDecoder) error {
			if typ == unix.NFTA_TABLE_FLAGS && ad.Uint32() != 0 {
				return fmt.Errorf("table flags 0x%x (dormant or owned): proxyd writes none", ad.Uint32())
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	t := &Table{Family: f, Name: name}
	if t.Chains, err = r.chains(f, name); err != nil {
		return nil, err
	}
	if t.Sets, err = r.sets(f, name); err != nil {
		return nil, err
	}
	if err := r.rules(t); err != nil {
		return nil, err
	}
	return t, nil
}

// errOtherTable marks a chain of another table in a chain dump.
var errOtherTable = errors.New("a chain of another table")

func (r *Reader) chains(f Family, table string) ([]*Chain, error) {
	msgs, err := r.request(unix.NFT_MSG_GETCHAIN, netlink.Dump, f, []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: cstring(table)}})
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []*Chain
	for _, m := range msgs {
		c := &Chain{}
		var base Base
		hooked, typed := false, false
		err := attrs(m.Data[4:], func(typ uint16, ad *netlink.AttributeDecoder) error {
			switch typ {
			case unix.NFTA_CHAIN_TABLE:
				// The kernel dumps the chains of every table of the
				// family, whatever table the request names.
				if ad.String() != table {
					return errOtherTable
				}
			case unix.NFTA_CHAIN_NAME:
				c.Name = ad.String()
			case unix.NFTA_CHAIN_HOOK:
				hooked = true
				return attrs(ad.Bytes(), func(typ uint16, ad *netlink.AttributeDecoder) error {
					switch typ {
					case unix.NFTA_HOOK_HOOKNUM:
						base.Hook = Hook(ad.Uint32())
					case unix.NFTA_HOOK_PRIORITY:
						base.Priority = int32(ad.Uint32())
					default:
						return fmt.Errorf("hook attribute %d (a device?): proxyd writes none", typ)
					}
					return nil
				})
			case unix.NFTA_CHAIN_POLICY:
				if ad.Uint32() == nfDrop {
					base.Policy = PolicyDrop
				}
			case unix.NFTA_CHAIN_TYPE:
				base.Type, typed = ChainType(ad.String()), true
			case attrChainUserdata:
				return errors.New("chain userdata (a comment?): proxyd writes none")
			case attrChainFlags, unix.NFTA_CHAIN_HANDLE, unix.NFTA_CHAIN_USE, unix.NFTA_CHAIN_COUNTERS:
			}
			return nil
		})
		if errors.Is(err, errOtherTable) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("chain %s: %w", c.Name, err)
		}
		if hooked != typed {
			return nil, fmt.Errorf("chain %s: a hook without a type, or a type without a hook", c.Name)
		}
		if hooked {
			c.Base = &base
		}
		out = append(out, c)
	}
	return out, nil
}

func (r *Reader) rules(t *Table) error {
	msgs, err := r.request(unix.NFT_MSG_GETRULE, netlink.Dump, t.Family, []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: cstring(t.Name)}})
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	for _, m := range msgs {
		var chain string
		var handle uint64
		var ex []expr.Any
		err := attrs(m.Data[4:], func(typ uint16, ad *netlink.AttributeDecoder) error {
			switch typ {
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_HANDLE:
				handle = ad.Uint64()
			case unix.NFTA_RULE_EXPRESSIONS:
				var err error
				ex, err = expressions(t.Family, ad.Bytes())
				return err
			case unix.NFTA_RULE_USERDATA:
				return errors.New("rule userdata (a comment?): proxyd writes none")
			}
			return nil
		})
		c := t.Chain(chain)
		if err == nil && c == nil {
			err = fmt.Errorf("a rule of chain %q, which the chain dump did not have", chain)
		}
		if err != nil {
			return fmt.Errorf("chain %s: %w", chain, err)
		}
		rule, err := DecompileRule(t.Family, ex)
		if err != nil {
			return fmt.Errorf("chain %s rule %d: %w", chain, len(c.Rules), err)
		}
		c.Rules = append(c.Rules, rule)
		c.Handles = append(c.Handles, handle)
	}
	return nil
}

// exprTypes are the expressions the compiler emits, by kernel name.
var exprTypes = map[string]func() expr.Any{
	"payload":   func() expr.Any { return &expr.Payload{} },
	"meta":      func() expr.Any { return &expr.Meta{} },
	"cmp":       func() expr.Any { return &expr.Cmp{} },
	"lookup":    func() expr.Any { return &expr.Lookup{} },
	"bitwise":   func() expr.Any { return &expr.Bitwise{} },
	"fib":       func() expr.Any { return &expr.Fib{} },
	"ct":        func() expr.Any { return &expr.Ct{} },
	"dynset":    func() expr.Any { return &expr.Dynset{} },
	"numgen":    func() expr.Any { return &expr.Numgen{} },
	"immediate": func() expr.Any { return &expr.Immediate{} },
	"nat":       func() expr.Any { return &expr.NAT{} },
	"masq":      func() expr.Any { return &expr.Masq{} },
	"reject":    func() expr.Any { return &expr.Reject{} },
}

// expressions decodes a rule's NFTA_RULE_EXPRESSIONS.
func expressions(f Family, b []byte) ([]expr.Any, error) {
	var out []expr.Any
	err := attrs(b, func(typ uint16, ad *netlink.AttributeDecoder) error {
		if typ != unix.NFTA_LIST_ELEM {
			return fmt.Errorf("expression list attribute %d", typ)
		}
		var name string
		var data []byte
		if err := attrs(ad.Bytes(), func(typ uint16, ad *netlink.AttributeDecoder) error {
			switch typ {
			case unix.NFTA_EXPR_NAME:
				name = ad.String()
			case unix.NFTA_EXPR_DATA:
				data = ad.Bytes()
			}
			return nil
		}); err != nil {
			return err
		}
		if name == "byteorder" {
			e, err := byteorder(data)
			if err != nil {
				return fmt.Errorf("expression %d (byteorder): %w", len(out), err)
			}
			out = append(out, e)
			return nil
		}
		mk, ok := exprTypes[name]
		if !ok {
			return fmt.Errorf("expression %d is %q, which proxyd never writes", len(out), name)
		}
		e := mk()
		if err := expr.Unmarshal(byte(f), data, e); err != nil {
			return fmt.Errorf("expression %d (%s): %w", len(out), name, err)
		}
		if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT {
			e = &expr.Verdict{}
			if err := expr.Unmarshal(byte(f), data, e); err != nil {
				return fmt.Errorf("expression %d (verdict): %w", len(out), err)
			}
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// byteorder decodes a byteorder expression, which google/nftables v0.3.0
// cannot.
func byteorder(data []byte) (*expr.Byteorder, error) {
	e := &expr.Byteorder{}
	err := attrs(data, func(typ uint16, ad *netlink.AttributeDecoder) error {
		switch typ {
		case unix.NFTA_BYTEORDER_SREG:
			e.SourceRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_DREG:
			e.DestRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_OP:
			e.Op = expr.ByteorderOp(ad.Uint32())
		case unix.NFTA_BYTEORDER_LEN:
			e.Len = ad.Uint32()
		case unix.NFTA_BYTEORDER_SIZE:
			e.Size = ad.Uint32()
		default:
			return fmt.Errorf("attribute %d", typ)
		}
		return nil
	})
	return e, err
}

// request sends one nf_tables request and returns the answers.
func (r *Reader) request(msgType uint16, flags netlink.HeaderFlags, f Family, a []netlink.Attribute) ([]netlink.Message, error) {
	data, err := netlink.MarshalAttributes(a)
	if err != nil {
		return nil, err
	}
	return r.c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType), Flags: netlink.Request | flags},
		Data:   append([]byte{byte(f), unix.NFNETLINK_V0, 0, 0}, data...),
	})
}

// attrs walks the attributes in b, big-endian, calling fn for each.
func attrs(b []byte, fn func(typ uint16, ad *netlink.AttributeDecoder) error) error {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if err := fn(ad.Type(), ad); err != nil {
			return err
		}
	}
	return ad.Err()
}

func cstring(s string) []byte { return append([]byte(s), 0) }
