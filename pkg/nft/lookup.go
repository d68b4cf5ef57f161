package nft

import (
	"errors"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Lookup matches when the concatenation of Key's fields is an element of
// the named set, or with Not when it is not:
// "ip daddr . meta l4proto . th dport @set", "ip saddr != @set".
type Lookup struct {
	Key []Field
	Set string
	Not bool
}

func (s Lookup) text(Family) string {
	op := ""
	if s.Not {
		op = "!= "
	}
	return fieldsText(s.Key) + " " + op + "@" + s.Set
}

func (s Lookup) compile(c *compiler) error {
	if s.Set == "" {
		return errors.New("lookup without a set")
	}
	if err := c.loadKey(s.Key); err != nil {
		return err
	}
	c.emit(&expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: s.Set, Invert: s.Not})
	return nil
}

func (s Lookup) eval(x *exec) (step, error) {
	set, err := x.set(s.Set, s.Key)
	if err != nil {
		return 0, err
	}
	if _, found, ok := x.lookup(set, s.Key); !ok || found == s.Not {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		fs, next, _ := keyThen(ex)
		if l, ok := next.(*expr.Lookup); ok && !l.IsDestRegSet {
			return Lookup{Key: fs, Set: l.SetName, Not: l.Invert}
		}
		return nil
	})
}
