package nft

import (
	"errors"
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Vmap looks the concatenation of Key's fields up in a verdict map and
// ends the rule with the element's verdict; a key not in the map does not
// match: "ip daddr . meta l4proto . th dport vmap @service-ips".
type Vmap struct {
	Key []Field
	Map string
}

func (s Vmap) text(Family) string { return fieldsText(s.Key) + " vmap @" + s.Map }

func (s Vmap) compile(c *compiler) error {
	if s.Map == "" {
		return errors.New("vmap without a map")
	}
	if err := c.loadKey(s.Key); err != nil {
		return err
	}
	c.emit(&expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: s.Map, IsDestRegSet: true, DestRegister: unix.NFT_REG_VERDICT})
	return nil
}

func (s Vmap) eval(x *exec) (step, error) {
	m, err := x.set(s.Map, s.Key)
	if err != nil {
		return 0, err
	}
	if !m.IsVerdictMap() {
		return 0, fmt.Errorf("%s is not a verdict map", s.Map)
	}
	e, found, ok := x.lookup(m, s.Key)
	if !ok || !found || e == nil {
		return stepMiss, nil
	}
	return x.end(e.Verdict)
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		fs, next, _ := keyThen(ex)
		if l, ok := next.(*expr.Lookup); ok && l.IsDestRegSet {
			return Vmap{Key: fs, Map: l.SetName}
		}
		return nil
	})
}
