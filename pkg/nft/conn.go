package nft

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// Conn is a google/nftables connection that writes each set's userdata as
// this package computes it. google/nftables v0.3.0 has no field for a
// set's userdata and writes only a key byte order there; nft keeps a map's
// typeof declaration in it, without which nft prints an integer-keyed map
// as "type 0" and cannot load its own listing back. So the connection's
// socket is a hook (google/nftables' WithTestDial) that passes every
// message to a real nf_tables socket unchanged, except that in the NEWSET
// message of each set queued with AddSet it puts that set's userdata. The
// batch stays one transaction. When google/nftables can write userdata,
// this hook goes.
type Conn struct {
	*gnft.Conn
	sock *netlink.Conn

	mu       sync.Mutex
	userdata map[setID][]byte
}

type setID struct {
	family      Family
	table, name string
}

// Dial opens a Conn in the network namespace open at netnsFD (0: the
// caller's); opts set options of the real socket (buffer sizes).
func Dial(netnsFD int, opts ...func(*netlink.Conn) error) (*Conn, error) {
	sock, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("open nf_tables netlink socket: %w", err)
	}
	for _, opt := range opts {
		if err := opt(sock); err != nil {
			_ = sock.Close()
			return nil, fmt.Errorf("nf_tables netlink socket: %w", err)
		}
	}
	c := &Conn{sock: sock, userdata: map[setID][]byte{}}
	if c.Conn, err = gnft.New(gnft.AsLasting(), gnft.WithTestDial(c.forward)); err != nil {
		_ = sock.Close()
		return nil, err
	}
	return c, nil
}

// Socket is the real socket, for deadlines.
func (c *Conn) Socket() *netlink.Conn { return c.sock }

// Close closes the connection and its socket.
func (c *Conn) Close() error {
	_ = c.Conn.CloseLasting()
	return c.sock.Close()
}

// forward is the hook: a request goes to the real socket (with the
// userdata put in), a receive comes from it. A dump's last message lost
// its done marker to the real socket's reader; it is put back, or the
// hook's reader would wait for it.
func (c *Conn) forward(req []netlink.Message) ([]netlink.Message, error) {
	if req == nil {
		msgs, err := c.sock.Receive()
		if err != nil {
			return nil, err
		}
		for i := range msgs {
			msgs[i].Header.PID = nltest.PID
		}
		if n := len(msgs); n > 0 && msgs[n-1].Header.Flags&netlink.Multi != 0 {
			done := netlink.Message{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: msgs[n-1].Header.Sequence, PID: nltest.PID}}
			msgs = append(msgs, done)
		}
		return msgs, nil
	}
	c.mu.Lock()
	for i, m := range req {
		if m.Header.Type == netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSET) {
			var err error
			if req[i].Data, err = c.withUserdata(m.Data); err != nil {
				c.mu.Unlock()
				return nil, err
			}
			req[i].Header.Length = 0 // the real socket measures the new data
		}
	}
	c.mu.Unlock()
	_, err := c.sock.SendMessages(req)
	return nil, err
}

// withUserdata rewrites a NEWSET message with the userdata registered for
// its set, if any. It copies the other attributes byte for byte (flags
// such as NLA_F_NESTED included).
func (c *Conn) withUserdata(data []byte) ([]byte, error) {
	id := setID{family: Family(data[0])}
	out := append([]byte(nil), data[:4]...)
	for b := data[4:]; len(b) > 0; {
		if len(b) < 4 {
			return nil, fmt.Errorf("NEWSET message: %d stray bytes", len(b))
		}
		n := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < 4 || n > len(b) {
			return nil, fmt.Errorf("NEWSET message: attribute length %d", n)
		}
		switch typ {
		case unix.NFTA_SET_TABLE:
			id.table = strings.TrimRight(string(b[4:n]), "\x00")
		case unix.NFTA_SET_NAME:
			id.name = strings.TrimRight(string(b[4:n]), "\x00")
		}
		next := min(padded(n), len(b))
		if typ != unix.NFTA_SET_USERDATA {
			out = append(out, b[:next]...)
		}
		b = b[next:]
	}
	ud, ok := c.userdata[id]
	if !ok {
		return data, nil
	}
	if len(ud) > 0 {
		attr, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_SET_USERDATA, Data: ud}})
		if err != nil {
			return nil, err
		}
		out = append(out, attr...)
	}
	return out, nil
}

// register makes s's NEWSET messages in table t carry s's userdata.
func (c *Conn) register(t *gnft.Table, s *Set) error {
	ud, err := setUserdata(s)
	if err != nil {
		return fmt.Errorf("set %s: %w", s.Name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.userdata[setID{Family(t.Family), t.Name, s.Name}] = ud
	return nil
}

// Generation is the ruleset generation of the connection's network
// namespace (NFT_MSG_GETGEN): the kernel counts it up by one with every
// committed nf_tables transaction, of any table and any writer, so an
// unchanged generation proves that nobody committed anything.
func (c *Conn) Generation() (uint32, error) {
	msgs, err := c.sock.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("nf_tables generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		var gen uint32
		found := false
		err := attrs(m.Data[4:], func(typ uint16, ad *netlink.AttributeDecoder) error {
			if typ == unix.NFTA_GEN_ID {
				gen, found = ad.Uint32(), true
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("nf_tables generation: %w", err)
		}
		if found {
			return gen, nil
		}
	}
	return 0, fmt.Errorf("nf_tables generation: no NFTA_GEN_ID in the answer")
}
