package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/pkg/model"
)

// Entry is one conntrack entry as the readers of this file decode it: the
// fields connection balance and `proxyd explain` need, without the
// allocations of a general-purpose decoder.
type Entry struct {
	ID    uint32
	Proto uint8
	// Orig is the tuple as the client sent it (destination: the VIP);
	// Reply is the tuple the answer carries (source: the endpoint after
	// DNAT, destination: the client, or the node after masquerade).
	Orig, Reply Tuple
	// Status is the IPS_* bit set; TCPState the TCP_CONNTRACK_* state
	// (0 for other protocols).
	Status   uint32
	TCPState uint8
	// Timeout is how long the entry lives without another packet.
	Timeout time.Duration
	// Start is when the kernel created the entry, when it records that
	// (net.netfilter.nf_conntrack_timestamp=1); zero otherwise.
	Start time.Time
}

// Tuple is one direction of an entry.
type Tuple struct{ Src, Dst netip.AddrPort }

// TCP connection states (TCP_CONNTRACK_*) and status bits (IPS_*) the
// readers report.
const (
	TCPSynSent     = 1
	TCPEstablished = 3
	TCPTimeWait    = 7

	StatusSeenReply = 1 << 1
	StatusAssured   = 1 << 2
	StatusSrcNAT    = 1 << 4
	StatusDstNAT    = 1 << 5
)

var tcpStates = [...]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
	"LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

// State is the TCP state as conntrack(8) prints it, or "" for other protocols.
func (e *Entry) State() string {
	if e.Proto != unix.IPPROTO_TCP {
		return ""
	}
	if int(e.TCPState) < len(tcpStates) {
		return tcpStates[e.TCPState]
	}
	return fmt.Sprintf("STATE%d", e.TCPState)
}

// Established reports whether e is a TCP connection in state ESTABLISHED.
func (e *Entry) Established() bool {
	return e.Proto == unix.IPPROTO_TCP && e.TCPState == TCPEstablished
}

// ctnetlink message types, attributes and multicast groups
// (linux/netfilter/nfnetlink_conntrack.h).
const (
	subsysCtnetlink = 1
	msgCtNew        = 0
	msgCtGet        = 1
	msgCtDelete     = 2

	groupNew     = 1 // NFNLGRP_CONNTRACK_NEW
	groupUpdate  = 2 // NFNLGRP_CONNTRACK_UPDATE
	groupDestroy = 3 // NFNLGRP_CONNTRACK_DESTROY

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaProtoinfo  = 4
	ctaTimeout    = 7
	ctaID         = 12
	ctaTimestamp  = 20

	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSport = 2
	ctaProtoDport = 3

	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1
	ctaTimestampStart    = 1

	nlaTypeMask = 0x3fff
)

// Reader dumps and watches the conntrack table of one network namespace
// over ctnetlink, decoding entries as they stream in from one reused
// buffer, so a walk's memory does not grow with the table. A Reader is
// not safe for concurrent use.
type Reader struct {
	c   *netlink.Conn
	raw syscall.RawConn
	buf []byte
}

// recvBuffer is the receive buffer: the kernel fills dump datagrams up
// to the largest buffer the reader offered, at most 32 KiB.
const recvBuffer = 64 << 10

// NewReader opens a ctnetlink socket in the network namespace netnsFD
// refers to (0: the caller's).
func NewReader(netnsFD int) (*Reader, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("conntrack: open ctnetlink: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("conntrack: ctnetlink socket: %w", err)
	}
	return &Reader{c: c, raw: raw, buf: make([]byte, recvBuffer)}, nil
}

// recv reads one datagram into r.buf.
func (r *Reader) recv() ([]byte, error) {
	var n int
	var rerr error
	err := r.raw.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), r.buf, 0)
		return rerr != unix.EAGAIN && rerr != unix.EINTR
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, err
	}
	return r.buf[:n], nil
}

// messages calls fn with the type, flags and body of each netlink
// message in a datagram; done is true after NLMSG_DONE.
func messages(b []byte, fn func(typ, flags uint16, body []byte)) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		n := int(binary.NativeEndian.Uint32(b))
		if n < unix.NLMSG_HDRLEN || n > len(b) {
			return false, fmt.Errorf("conntrack: malformed netlink message (length %d of %d)", n, len(b))
		}
		typ, flags := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint16(b[6:])
		body := b[unix.NLMSG_HDRLEN:n]
		switch typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(body) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(body)); code != 0 {
					return true, unix.Errno(-code)
				}
			}
		default:
			fn(typ, flags, body)
		}
		n = (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if n >= len(b) {
			break
		}
		b = b[n:]
	}
	return false, nil
}

// Close releases the socket.
func (r *Reader) Close() error { return r.c.Close() }

// Dump calls fn with every entry of family f's table, one at a time; e is
// reused between calls. It is one walk of the kernel's table, and costs
// time in proportion to it.
func (r *Reader) Dump(f model.IPFamily, fn func(e *Entry)) error {
	fam := uint8(unix.AF_INET)
	if f == model.IPv6 {
		fam = unix.AF_INET6
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysCtnetlink<<8 | msgCtGet), Flags: netlink.Request | netlink.Dump},
		Data:   []byte{fam, 0, 0, 0},
	}
	if _, err := r.c.Send(req); err != nil {
		return fmt.Errorf("conntrack: dump %v: %w", f, err)
	}
	var e Entry
	for {
		b, err := r.recv()
		if err != nil {
			return fmt.Errorf("conntrack: dump %v: %w", f, err)
		}
		done, err := messages(b, func(_, _ uint16, body []byte) {
			if decode(body, &e) {
				fn(&e)
			}
		})
		if err != nil {
			return fmt.Errorf("conntrack: dump %v: %w", f, err)
		}
		if done {
			return nil
		}
	}
}

// Event is one change the kernel reports: a new entry, an update (a TCP
// state change, the first reply) or a destroyed entry.
type Event struct {
	Type  EventType
	Entry Entry
}

// EventType says what happened to an entry.
type EventType uint8

// The event types.
const (
	EventNew EventType = iota
	EventUpdate
	EventDestroy
)

// ErrOverflow is returned by Listen when the kernel dropped events because
// the socket's buffer was full: the listener's view is incomplete until it
// dumps the table again.
var ErrOverflow = errors.New("conntrack: event buffer overflow, events were lost")

// Listen subscribes to the namespace's conntrack events (new, update,
// destroy; updates only if updates is true) and calls fn for each until fn
// returns false or reading fails. bufBytes is the socket's receive buffer:
// the kernel drops events that do not fit, which Listen reports as
// ErrOverflow. Listen takes the Reader's socket for itself.
func (r *Reader) Listen(updates bool, bufBytes int, fn func(ev *Event) bool) error {
	groups := []uint32{groupNew, groupDestroy}
	if updates {
		groups = append(groups, groupUpdate)
	}
	for _, g := range groups {
		if err := r.c.JoinGroup(g); err != nil {
			return fmt.Errorf("conntrack: join event group %d: %w", g, err)
		}
	}
	if bufBytes > 0 {
		if err := forceReadBuffer(r.c, bufBytes); err != nil {
			return fmt.Errorf("conntrack: event buffer: %w", err)
		}
	}
	var ev Event
	for stop := false; !stop; {
		b, err := r.recv()
		if errors.Is(err, unix.ENOBUFS) {
			return ErrOverflow
		}
		if err != nil {
			return fmt.Errorf("conntrack: events: %w", err)
		}
		_, err = messages(b, func(typ, flags uint16, body []byte) {
			switch typ & 0xff {
			case msgCtNew:
				ev.Type = EventUpdate
				if flags&(unix.NLM_F_CREATE|unix.NLM_F_EXCL) != 0 {
					ev.Type = EventNew
				}
			case msgCtDelete:
				ev.Type = EventDestroy
			default:
				return
			}
			if !stop && decode(body, &ev.Entry) && !fn(&ev) {
				stop = true
			}
		})
		if err != nil {
			return fmt.Errorf("conntrack: events: %w", err)
		}
	}
	return nil
}

func forceReadBuffer(c *netlink.Conn, n int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	return serr
}

// decode fills e from one ctnetlink message body (nfgenmsg, then
// attributes); it reports false for a body it cannot read.
func decode(b []byte, e *Entry) bool {
	if len(b) < 4 {
		return false
	}
	*e = Entry{}
	ok := true
	attrs(b[4:], func(typ uint16, v []byte) {
		switch typ {
		case ctaTupleOrig:
			ok = decodeTuple(v, &e.Orig, &e.Proto) && ok
		case ctaTupleReply:
			var p uint8
			ok = decodeTuple(v, &e.Reply, &p) && ok
		case ctaStatus:
			e.Status = be32(v)
		case ctaTimeout:
			e.Timeout = time.Duration(be32(v)) * time.Second
		case ctaID:
			e.ID = be32(v)
		case ctaProtoinfo:
			attrs(v, func(typ uint16, v []byte) {
				if typ == ctaProtoinfoTCP {
					attrs(v, func(typ uint16, v []byte) {
						if typ == ctaProtoinfoTCPState && len(v) > 0 {
							e.TCPState = v[0]
						}
					})
				}
			})
		case ctaTimestamp:
			attrs(v, func(typ uint16, v []byte) {
				if typ == ctaTimestampStart && len(v) == 8 {
					e.Start = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
				}
			})
		}
	})
	return ok && e.Orig.Dst.IsValid()
}

func decodeTuple(b []byte, t *Tuple, proto *uint8) bool {
	var src, dst netip.Addr
	var sport, dport uint16
	attrs(b, func(typ uint16, v []byte) {
		switch typ {
		case ctaTupleIP:
			attrs(v, func(typ uint16, v []byte) {
				a, ok := netip.AddrFromSlice(v)
				if !ok {
					return
				}
				switch typ {
				case ctaIPv4Src, ctaIPv6Src:
					src = a
				case ctaIPv4Dst, ctaIPv6Dst:
					dst = a
				}
			})
		case ctaTupleProto:
			attrs(v, func(typ uint16, v []byte) {
				switch typ {
				case ctaProtoNum:
					if len(v) > 0 {
						*proto = v[0]
					}
				case ctaProtoSport:
					sport = be16(v)
				case ctaProtoDport:
					dport = be16(v)
				}
			})
		}
	})
	t.Src, t.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return src.IsValid() && dst.IsValid()
}

// attrs calls fn for each netlink attribute in b, with the nested and
// byte-order flags cleared from its type.
func attrs(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b))
		if n < 4 || n > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&nlaTypeMask, b[4:n])
		n = (n + 3) &^ 3
		if n >= len(b) {
			return
		}
		b = b[n:]
	}
}

func be16(v []byte) uint16 {
	if len(v) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func be32(v []byte) uint32 {
	if len(v) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}
