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
	key, ok := x.key(s.Key)
	if !ok {
		return stepMiss, nil
	}
	if _, found := x.lookup(set, key); found == s.Not {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		fs, n := loadedKey(ex)
		if len(fs) == 0 || n >= len(ex) {
			return nil
		}
		if l, ok := ex[n].(*expr.Lookup); ok && !l.IsDestRegSet {
			return Lookup{Key: fs, Set: l.SetName, Not: l.Invert}
		}
		return nil
	})
}
