package nft

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// DPort matches a transport protocol and destination port together, as nft
// writes "tcp dport 30081": the protocol check, then the port.
type DPort struct {
	Proto uint8
	Port  uint16
}

func (s DPort) text(Family) string {
	return ProtoName(s.Proto) + " dport " + NumValue(uint32(s.Port)).text(TypeInetService)
}

func (s DPort) compile(c *compiler) error {
	if err := (Proto{Proto: s.Proto}).compile(c); err != nil {
		return err
	}
	c.emit(&expr.Payload{DestRegister: unix.NFT_REG_1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG_1, Data: binary.BigEndian.AppendUint16(nil, s.Port)})
	return nil
}

func (s DPort) eval(x *exec) (step, error) {
	if x.fl.Proto != s.Proto || x.fl.Dst.Port() != s.Port {
		return stepMiss, nil
	}
	return stepNext, nil
}

func init() {
	decodes(func(_ Family, ex []expr.Any) Stmt {
		p, ok := protoMatch(ex)
		if !ok || len(ex) < 4 {
			return nil
		}
		if f, ok := fieldOf(ex[2]); !ok || f != THDport {
			return nil
		}
		if c, ok := ex[3].(*expr.Cmp); ok && len(c.Data) == 2 {
			return DPort{Proto: p, Port: binary.BigEndian.Uint16(c.Data)}
		}
		return nil
	})
}
