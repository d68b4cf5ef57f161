package ipvs

import (
	"errors"
	"fmt"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
)

// Handle is the part of github.com/moby/ipvs the backend uses. The kernel
// identifies a service by (address family, protocol, address, port) and a
// destination by (address, port) within its service; everything else in the
// structs is an attribute.
type Handle interface {
	NewService(s *mobyipvs.Service) error
	UpdateService(s *mobyipvs.Service) error
	DelService(s *mobyipvs.Service) error
	GetServices() ([]*mobyipvs.Service, error)
	NewDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error
	UpdateDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error
	DelDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error
	GetDestinations(s *mobyipvs.Service) ([]*mobyipvs.Destination, error)
	// Flush deletes every virtual server in the network namespace, proxyd's
	// or not. The backend never calls it; tests and tools may.
	Flush() error
}

// Flag bits of an IPVS service (include/uapi/linux/ip_vs.h).
const (
	flagPersistent uint32 = 0x1
	flagHashed     uint32 = 0x2 // set by the kernel on every service it returns
)

// ErrIPVSUnavailable is wrapped by New and Cleanup when the kernel has no
// IPVS: the ip_vs module is neither loaded nor loadable.
var ErrIPVSUnavailable = errors.New("ipvs mode needs the ip_vs kernel module")

// checkIPVS reports whether the kernel has the IPVS generic netlink family.
// Asking for the family makes the kernel try to load ip_vs, like modprobe
// would; the error names what is missing.
func checkIPVS() error {
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return fmt.Errorf("%w: generic netlink family IPVS not found (is ip_vs loaded? modprobe ip_vs): %w", ErrIPVSUnavailable, err)
	}
	return nil
}

// kernelHandle is the real Handle, a moby/ipvs netlink socket.
type kernelHandle struct{ *mobyipvs.Handle }

// newKernelHandle opens IPVS in the network namespace at path ("" is the
// current one). It checks first that IPVS exists, because moby/ipvs only
// logs that and hands out a handle whose every call fails.
func newKernelHandle(path string) (Handle, error) {
	if err := checkIPVS(); err != nil {
		return nil, err
	}
	h, err := mobyipvs.New(path)
	if err != nil {
		return nil, fmt.Errorf("%w: open ipvs netlink socket: %w", ErrIPVSUnavailable, err)
	}
	return kernelHandle{h}, nil
}

// isExist and isNotExist classify the kernel's (and the Fake's) errors.
func isExist(err error) bool { return errors.Is(err, syscall.EEXIST) }
func isNotExist(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}
