package ipvs

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
)

// Fake is an in-memory Handle that answers like the kernel's IPVS: adding a
// service or destination that exists fails with EEXIST, changing or deleting
// a missing service fails with ESRCH and a missing destination with ENOENT,
// destinations only live under an existing service, an unloaded scheduler
// fails with ENOENT, and everything read back is a copy carrying the
// kernel's hashed flag. It is safe for concurrent use.
type Fake struct {
	mu         sync.Mutex
	schedulers map[string]bool
	services   []*fakeService
	// Conns, when set, supplies the connection counters GetDestinations
	// reports for a destination, so tests can model draining connections.
	Conns func(svc ServiceID, dest netip.AddrPort) (active, inactive int)
}

type fakeService struct {
	svc   mobyipvs.Service
	dests []mobyipvs.Destination
}

// ServiceID is the kernel's identity of a non-fwmark virtual server.
type ServiceID struct {
	Addr     netip.Addr
	Protocol uint16
	Port     uint16
}

func (id ServiceID) String() string {
	return fmt.Sprintf("%s/%s", protoName(id.Protocol), netip.AddrPortFrom(id.Addr, id.Port))
}

// NewFake returns an empty Fake in which only the given schedulers are
// loaded; with none, every scheduler proxyd knows is.
func NewFake(schedulers ...string) *Fake {
	if len(schedulers) == 0 {
		schedulers = Schedulers()
	}
	f := &Fake{schedulers: map[string]bool{}}
	for _, s := range schedulers {
		f.schedulers[s] = true
	}
	return f
}

func serviceID(s *mobyipvs.Service) ServiceID {
	a, _ := netip.AddrFromSlice(s.Address)
	return ServiceID{Addr: a.Unmap(), Protocol: s.Protocol, Port: s.Port}
}

func destAddr(d *mobyipvs.Destination) netip.AddrPort {
	a, _ := netip.AddrFromSlice(d.Address)
	return netip.AddrPortFrom(a.Unmap(), d.Port)
}

func (f *Fake) find(s *mobyipvs.Service) int {
	if s == nil {
		return -1
	}
	id := serviceID(s)
	return slices.IndexFunc(f.services, func(fs *fakeService) bool {
		return fs.svc.FWMark == s.FWMark && fs.svc.AddressFamily == s.AddressFamily && serviceID(&fs.svc) == id
	})
}

func (f *Fake) validate(s *mobyipvs.Service) error {
	if s == nil {
		return syscall.EINVAL
	}
	if s.AddressFamily != syscall.AF_INET && s.AddressFamily != syscall.AF_INET6 {
		return syscall.EAFNOSUPPORT
	}
	if s.FWMark == 0 {
		switch s.Protocol {
		case syscall.IPPROTO_TCP, syscall.IPPROTO_UDP, syscall.IPPROTO_SCTP:
		default:
			return syscall.EPROTONOSUPPORT
		}
		a, ok := netip.AddrFromSlice(s.Address)
		if !ok || (a.Unmap().Is4() != (s.AddressFamily == syscall.AF_INET)) {
			return syscall.EINVAL
		}
	}
	if s.AddressFamily == syscall.AF_INET6 && (s.Netmask < 1 || s.Netmask > 128) {
		return syscall.EINVAL
	}
	if !f.schedulers[s.SchedName] {
		return syscall.ENOENT
	}
	return nil
}

// NewService adds s; EEXIST if it exists, ENOENT for an unloaded scheduler.
func (f *Fake) NewService(s *mobyipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.validate(s); err != nil {
		return err
	}
	if f.find(s) >= 0 {
		return syscall.EEXIST
	}
	c := copyService(s)
	c.Flags |= flagHashed
	c.Stats = mobyipvs.SvcStats{}
	f.services = append(f.services, &fakeService{svc: c})
	return nil
}

// UpdateService changes s's scheduler, flags, timeout and netmask.
func (f *Fake) UpdateService(s *mobyipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(s)
	if i < 0 {
		return syscall.ESRCH
	}
	if err := f.validate(s); err != nil {
		return err
	}
	fs := f.services[i]
	fs.svc.SchedName, fs.svc.Flags, fs.svc.Timeout, fs.svc.Netmask, fs.svc.PEName = s.SchedName, s.Flags|flagHashed, s.Timeout, s.Netmask, s.PEName
	return nil
}

// DelService deletes s and its destinations.
func (f *Fake) DelService(s *mobyipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(s)
	if i < 0 {
		return syscall.ESRCH
	}
	f.services = slices.Delete(f.services, i, i+1)
	return nil
}

// GetServices returns copies of all services, in creation order.
func (f *Fake) GetServices() ([]*mobyipvs.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*mobyipvs.Service, 0, len(f.services))
	for _, fs := range f.services {
		c := copyService(&fs.svc)
		out = append(out, &c)
	}
	return out, nil
}

func (f *Fake) findDest(fs *fakeService, d *mobyipvs.Destination) int {
	ap := destAddr(d)
	return slices.IndexFunc(fs.dests, func(x mobyipvs.Destination) bool { return destAddr(&x) == ap })
}

func (f *Fake) destOp(s *mobyipvs.Service, d *mobyipvs.Destination, op func(fs *fakeService, i int) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	si := f.find(s)
	if si < 0 {
		return syscall.ESRCH
	}
	if d == nil || d.Weight < 0 {
		return syscall.EINVAL
	}
	a, ok := netip.AddrFromSlice(d.Address)
	if !ok || a.Unmap().Is4() != (s.AddressFamily == syscall.AF_INET) {
		return syscall.EINVAL
	}
	fs := f.services[si]
	return op(fs, f.findDest(fs, d))
}

// NewDestination adds d under s; ESRCH without s, EEXIST if d exists.
func (f *Fake) NewDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	return f.destOp(s, d, func(fs *fakeService, i int) error {
		if i >= 0 {
			return syscall.EEXIST
		}
		c := copyDest(d)
		c.AddressFamily = fs.svc.AddressFamily
		c.ActiveConnections, c.InactiveConnections, c.Stats = 0, 0, mobyipvs.DstStats{}
		fs.dests = append(fs.dests, c)
		return nil
	})
}

// UpdateDestination changes d's weight, forwarding method and thresholds.
func (f *Fake) UpdateDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	return f.destOp(s, d, func(fs *fakeService, i int) error {
		if i < 0 {
			return syscall.ENOENT
		}
		x := &fs.dests[i]
		x.Weight, x.ConnectionFlags, x.UpperThreshold, x.LowerThreshold = d.Weight, d.ConnectionFlags, d.UpperThreshold, d.LowerThreshold
		return nil
	})
}

// DelDestination deletes d from s.
func (f *Fake) DelDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	return f.destOp(s, d, func(fs *fakeService, i int) error {
		if i < 0 {
			return syscall.ENOENT
		}
		fs.dests = slices.Delete(fs.dests, i, i+1)
		return nil
	})
}

// GetDestinations returns copies of s's destinations; like the kernel's
// dump, a missing service has none.
func (f *Fake) GetDestinations(s *mobyipvs.Service) ([]*mobyipvs.Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	si := f.find(s)
	if si < 0 {
		return nil, nil
	}
	fs := f.services[si]
	out := make([]*mobyipvs.Destination, 0, len(fs.dests))
	for _, d := range fs.dests {
		c := copyDest(&d)
		if f.Conns != nil {
			c.ActiveConnections, c.InactiveConnections = f.Conns(serviceID(&fs.svc), destAddr(&d))
		}
		out = append(out, &c)
	}
	return out, nil
}

// Flush deletes every service.
func (f *Fake) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services = nil
	return nil
}

func copyService(s *mobyipvs.Service) mobyipvs.Service {
	c := *s
	c.Address = slices.Clone(s.Address)
	return c
}

func copyDest(d *mobyipvs.Destination) mobyipvs.Destination {
	c := *d
	c.Address = slices.Clone(d.Address)
	return c
}

// ipBytes is a in the form moby/ipvs uses: 4 bytes for IPv4, 16 for IPv6.
func ipBytes(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }
