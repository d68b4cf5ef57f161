package nft

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Update adds the concatenation of Key's fields to a dynamic set, or
// refreshes its timeout: "update @set { ip saddr }", with Timeout
// "update @set { ip saddr timeout 1h }" (else the set's own).
type Update struct {
	Key     []Field
	Set     string
	Timeout time.Duration
}

func (s Update) text(Family) string {
	t := ""
	if s.Timeout > 0 {
		t = " timeout " + Duration(s.Timeout)
	}
	return "update @" + s.Set + " { " + fieldsText(s.Key) + t + " }"
}

func (s Update) compile(c *compiler) error {
	if s.Set == "" {
		return errors.New("update without a set")
	}
	if s.Timeout%time.Millisecond != 0 {
		return fmt.Errorf("timeout %v is not whole milliseconds", s.Timeout)
	}
	if err := c.loadKey(s.Key); err != nil {
		return err
	}
	c.emit(&expr.Dynset{SrcRegKey: unix.NFT_REG_1, SetName: s.Set, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: s.Timeout})
	return nil
}

func (s Update) eval(x *exec) (step, error) {
	set, err := x.set(s.Set, s.Key)
	if err != nil {
		return 0, err
	}
	if !set.Dynamic && set.Timeout == 0 {
		return 0, fmt.Errorf("set %s is neither dynamic nor has timeouts", s.Set)
	}
	x.remember(set, s.Key)
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		fs, next, _ := keyThen(ex)
		if d, ok := next.(*expr.Dynset); ok && d.Operation == unix.NFT_DYNSET_OP_UPDATE {
			return Update{Key: fs, Set: d.SetName, Timeout: d.Timeout}
		}
		return nil
	})
}
