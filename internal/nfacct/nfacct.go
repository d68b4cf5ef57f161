// Package nfacct creates and reads the kernel's extended accounting
// objects (nfnetlink_acct) of the calling thread's network namespace:
// named packet and byte counters that an iptables rule bumps with
// `-m nfacct --nfacct-name NAME`. kube-proxy's iptables mode counts two
// things this way and exports them as metrics; proxyd does the same.
package nfacct

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// MaxName is the longest name the kernel takes (NFACCT_NAME_MAX less the
// terminating NUL).
const MaxName = 31

// The messages and attributes of NFNL_SUBSYS_ACCT
// (include/uapi/linux/netfilter/nfnetlink_acct.h).
const (
	msgNew = 0
	msgGet = 1

	attrName    = 1
	attrPackets = 2
	attrBytes   = 3
)

// ErrNotFound is returned by Get for a counter that does not exist.
var ErrNotFound = errors.New("nfacct counter does not exist")

// Counter is one accounting object.
type Counter struct {
	Name           string
	Packets, Bytes uint64
}

// Ensure creates the counter name unless it exists already (then its
// values are kept). It fails when the kernel has no nfnetlink_acct.
func Ensure(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	// Without NLM_F_REPLACE the kernel answers EBUSY for an existing
	// name and leaves its counts alone.
	_, err := execute(msgNew, netlink.Request|netlink.Acknowledge|netlink.Create, name)
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("create nfacct counter %q: %w", name, err)
	}
	return nil
}

// Get reads the counter name: ErrNotFound when it does not exist. It
// lists every counter (a dump): the kernel flags its answer to a single
// get as one part of many, but never ends it.
func Get(name string) (Counter, error) {
	if err := checkName(name); err != nil {
		return Counter{}, err
	}
	msgs, err := execute(msgGet, netlink.Request|netlink.Dump, "")
	if err != nil {
		return Counter{}, fmt.Errorf("read nfacct counter %q: %w", name, err)
	}
	for _, m := range msgs {
		c, err := decode(m.Data)
		if err != nil {
			return Counter{}, fmt.Errorf("read nfacct counter %q: %w", name, err)
		}
		if c.Name == name {
			return c, nil
		}
	}
	return Counter{}, fmt.Errorf("read nfacct counter %q: %w", name, ErrNotFound)
}

func checkName(name string) error {
	if name == "" || len(name) > MaxName {
		return fmt.Errorf("nfacct counter name %q: want 1 to %d bytes", name, MaxName)
	}
	return nil
}

// execute sends one NFNL_SUBSYS_ACCT request, carrying a name attribute
// unless name is "", and returns the kernel's answers.
func execute(msg uint16, flags netlink.HeaderFlags, name string) ([]netlink.Message, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var attrs []byte
	if name != "" {
		ae := netlink.NewAttributeEncoder()
		ae.String(attrName, name)
		if attrs, err = ae.Encode(); err != nil {
			return nil, err
		}
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_ACCT<<8 | msg), Flags: flags},
		// struct nfgenmsg: family, version, resource id.
		Data: append([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	return c.Execute(req)
}

// decode reads one accounting object from an answer's payload.
func decode(data []byte) (Counter, error) {
	if len(data) < 4 {
		return Counter{}, fmt.Errorf("answer of %d bytes is too short", len(data))
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return Counter{}, err
	}
	ad.ByteOrder = binary.BigEndian
	var c Counter
	for ad.Next() {
		switch ad.Type() {
		case attrName:
			c.Name = ad.String()
		case attrPackets:
			c.Packets = ad.Uint64()
		case attrBytes:
			c.Bytes = ad.Uint64()
		}
	}
	return c, ad.Err()
}
