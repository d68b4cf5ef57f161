package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Reject answers the sender with port unreachable at once and drops the
// packet. In an ip or ip6 table it is plain "reject" (ICMP, ICMPv6). In an
// inet table it is "reject" (icmpx, either family) unless Family names the
// family the rule matched, as nft itself chooses there: "reject with icmp
// port-unreachable" (IP) or "reject with icmpv6 port-unreachable" (IP6),
// which is what an inet rule after an ip or ip6 match lists as once nft
// loaded it.
type Reject struct{ Family Family }

func (s Reject) text(f Family) string {
	switch {
	case f != INet || s.Family == 0:
		return "reject"
	case s.Family == IP6:
		return "reject with icmpv6 port-unreachable"
	}
	return "reject with icmp port-unreachable"
}

func (s Reject) compile(c *compiler) error {
	fam := s.Family
	switch {
	case fam != 0 && c.family != INet:
		return fmt.Errorf("only an inet table chooses the ICMP family of a reject")
	case fam != 0 && fam != IP && fam != IP6:
		return fmt.Errorf("reject of family %s", fam)
	case fam == 0 && c.family != INet:
		fam = c.family
	}
	switch fam {
	case 0:
		c.emit(&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
	case IP6:
		c.emit(&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 4}) // ICMPV6_PORT_UNREACH
	default:
		c.emit(&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}) // ICMP_PORT_UNREACH
	}
	return nil
}

func (Reject) eval(x *exec) (step, error) {
	x.fl.Reject()
	return x.end(Drop)
}

func init() {
	decodes(func(f Family, ex []expr.Any) Stmt {
		r, ok := ex[0].(*expr.Reject)
		if !ok {
			return nil
		}
		if f != INet || r.Type == unix.NFT_REJECT_ICMPX_UNREACH {
			return Reject{}
		}
		if r.Code == 4 {
			return Reject{Family: IP6}
		}
		return Reject{Family: IP}
	})
}
