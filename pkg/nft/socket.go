package nft

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// socketBuffer is the netlink socket's send and receive limit. A full sync
// of a large cluster is one batch of hundreds of thousands of messages:
// the kernel takes the whole batch in one sendmsg and queues one ack per
// message, so both limits must hold a whole transaction (nft does the
// same). They are limits, not allocations.
const socketBuffer = 1 << 30

// LargeBuffers raises a netlink socket's limits past
// net.core.{w,r}mem_max with the *BUFFORCE options, which CAP_NET_ADMIN
// allows; a google/nftables connection gets it with
// gnft.WithSockOptions(nft.LargeBuffers). Without it a table of a few
// thousand set elements fails with EMSGSIZE ("message too long").
func LargeBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, socketBuffer); e != nil {
				serr = fmt.Errorf("setsockopt %d: %w", opt, e)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
