package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"

	mobyipvs "github.com/moby/ipvs"

	"github.com/proxyd/proxyd/pkg/model"
)

// drainKey is one real server of one virtual server.
type drainKey struct {
	VS VSKey
	RS netip.AddrPort
}

// keyOf returns the identity of a kernel service proxyd could own:
// address-based (not fwmark), TCP, UDP or SCTP.
func keyOf(s *mobyipvs.Service) (VSKey, bool) {
	if s.FWMark != 0 {
		return VSKey{}, false
	}
	proto, ok := protoOf(s.Protocol)
	a, ok2 := netip.AddrFromSlice(s.Address)
	if !ok || !ok2 {
		return VSKey{}, false
	}
	return VSKey{Addr: a.Unmap(), Protocol: proto, Port: s.Port}, true
}

// toService is vs as moby/ipvs spells it. Persistence groups clients per
// address: netmask /32 for IPv4 (a mask) and 128 for IPv6 (a length).
func toService(vs *VirtualServer) *mobyipvs.Service {
	s := &mobyipvs.Service{Address: ipBytes(vs.Addr), Protocol: protoNumber(vs.Protocol), Port: vs.Port,
		SchedName: vs.Scheduler, AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
	if vs.Addr.Is6() {
		s.AddressFamily, s.Netmask = syscall.AF_INET6, 128
	}
	if vs.Timeout > 0 {
		s.Flags, s.Timeout = flagPersistent, vs.Timeout
	}
	return s
}

func serviceDiffers(kernel, want *mobyipvs.Service) bool {
	return kernel.SchedName != want.SchedName || kernel.Flags&^flagHashed != want.Flags ||
		kernel.Timeout != want.Timeout || kernel.Netmask != want.Netmask
}

func toDest(rs RealServer) *mobyipvs.Destination {
	return &mobyipvs.Destination{Address: ipBytes(rs.Addr.Addr()), Port: rs.Addr.Port(), Weight: rs.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq}
}

// apply writes desired and rules, returning the number of kernel changes.
// What the kernel holds otherwise than the last Sync left it (when that
// one succeeded) is recorded with p.repaired. A virtual server the kernel
// refuses is left out, everything else written, and the refusal returned
// as a proxier.RefusedError naming its service port.
func (p *Proxier) apply(ctx context.Context, desired *Table, rules *Ruleset, full bool) (int, error) {
	ops := 0
	trusted := p.trusted
	p.ensureSysctls()
	if err := p.links.EnsureLink(LinkName); err != nil {
		return ops, err
	}
	boundList, err := p.links.Addrs(LinkName)
	if err != nil {
		return ops, err
	}
	bound := map[netip.Addr]bool{}
	for _, a := range boundList {
		bound[a] = true
	}
	want := map[netip.Addr]bool{}
	for _, a := range desired.VIPs() {
		want[a] = true
	}
	// Virtual servers on the node's own addresses (NodePorts) are proxyd's
	// only by key, since those addresses are not bound to proxyd-ipvs0:
	// the ones it wants, wrote, or recorded in its nftables table (read
	// back after a restart or a failure).
	nodeOwned := map[VSKey]bool{}
	for k, vs := range p.written {
		if vs.OnNode {
			nodeOwned[k] = true
		}
	}
	if !trusted {
		recorded, err := p.fw.NodeServers()
		if err != nil {
			return ops, err
		}
		for _, t := range recorded {
			nodeOwned[VSKey(t)] = true
		}
	}
	owned := func(k VSKey) bool {
		a := k.Addr
		return bound[a] || want[a] || p.writtenVIPs[a] || nodeOwned[k] || desired.Servers[k] != nil
	}

	svcs, err := p.handle.GetServices()
	if err != nil {
		return ops, fmt.Errorf("list ipvs services: %w", err)
	}
	kernel := map[VSKey]*mobyipvs.Service{}
	for _, s := range svcs {
		if k, ok := keyOf(s); ok && owned(k) {
			kernel[k] = s
		}
	}
	// prev is what the last Sync wrote of a virtual server, when the
	// kernel is known to have held it.
	prev := func(k VSKey) *VirtualServer {
		if !trusted {
			return nil
		}
		return p.written[k]
	}

	// Add and update first, so traffic keeps flowing while it changes.
	var refused refusals
	for _, vs := range desired.Sorted() {
		if err := ctx.Err(); err != nil {
			return ops, err
		}
		n, err := p.syncServer(vs, kernel[vs.VSKey], prev(vs.VSKey), full)
		ops += n
		if err != nil {
			refused.add(vs.Service, err)
		}
	}
	for _, a := range desired.VIPs() {
		if !bound[a] {
			if trusted && p.writtenVIPs[a] {
				p.repaired("address %s was removed from %s", a, LinkName)
			}
			if err := p.links.AddAddr(LinkName, a); err != nil {
				return ops, err
			}
			ops++
		}
		p.writtenVIPs[a] = true
	}
	n, err := p.syncFirewall(desired, rules, trusted)
	ops += n
	if err != nil {
		return ops, err
	}

	// Then delete what is no longer wanted.
	for _, k := range sortedKeys(kernel) {
		if _, ok := desired.Servers[k]; ok {
			continue
		}
		if trusted && p.written[k] == nil {
			p.repaired("virtual server %s on an address of proxyd's was added by someone else", k)
		}
		if err := p.handle.DelService(kernel[k]); err != nil && !isNotExist(err) {
			return ops, fmt.Errorf("delete virtual server %s: %w", k, err)
		}
		ops++
		p.log.Debug("deleted virtual server", "vs", k)
	}
	for dk := range p.draining {
		if _, ok := desired.Servers[dk.VS]; !ok {
			delete(p.draining, dk)
		}
	}
	for _, a := range boundList {
		if !want[a] {
			if trusted && !p.writtenVIPs[a] {
				p.repaired("address %s was added to %s by someone else", a, LinkName)
			}
			if err := p.links.DelAddr(LinkName, a); err != nil {
				return ops, err
			}
			ops++
		}
	}
	for a := range p.writtenVIPs {
		if !want[a] {
			delete(p.writtenVIPs, a)
		}
	}
	p.written = desired.Servers
	return ops, refused.err()
}

func sortedKeys(m map[VSKey]*mobyipvs.Service) []VSKey {
	out := make([]VSKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, VSKey.Compare)
	return out
}

// syncServer makes one virtual server match vs. Its real servers are only
// read back when the sync is full, the service is new or changed, or some
// of its real servers drain. prev is what the last Sync wrote of it (nil
// when new or not trusted): where the kernel differs from prev, someone
// else changed it, and the write that undoes that is a repair.
func (p *Proxier) syncServer(vs *VirtualServer, kernel *mobyipvs.Service, prev *VirtualServer, full bool) (int, error) {
	ops := 0
	svc := toService(vs)
	switch {
	case kernel == nil:
		if err := p.handle.NewService(svc); err != nil {
			switch {
			case isExist(err):
			case isNotExist(err):
				return ops, fmt.Errorf("add virtual server %s: %w", vs.VSKey, schedulerError(vs.Scheduler, err))
			default:
				return ops, fmt.Errorf("add virtual server %s: %w", vs.VSKey, err)
			}
		}
		ops++
		if prev != nil {
			p.repaired("virtual server %s was missing", vs.VSKey)
		}
		p.log.Debug("added virtual server", "vs", vs.VSKey, "service", vs.Service)
	case serviceDiffers(kernel, svc):
		if prev != nil && serviceDiffers(kernel, toService(prev)) {
			p.repaired("virtual server %s had scheduler %s, flags %#x, timeout %d s", vs.VSKey, kernel.SchedName, kernel.Flags&^flagHashed, kernel.Timeout)
		}
		if err := p.handle.UpdateService(svc); err != nil {
			if isNotExist(err) && kernel.SchedName != svc.SchedName {
				err = schedulerError(vs.Scheduler, err)
			}
			return ops, fmt.Errorf("update virtual server %s: %w", vs.VSKey, err)
		}
		ops++
	default:
		if last, ok := p.written[vs.VSKey]; !full && ok && slices.Equal(last.RealServers, vs.RealServers) && !p.drainsUnder(vs.VSKey) {
			return ops, nil
		}
	}
	if kernel == nil {
		prev = nil // the missing virtual server is the one repair
	}
	var have []*mobyipvs.Destination
	if kernel != nil {
		var err error
		if have, err = p.handle.GetDestinations(svc); err != nil {
			return ops, fmt.Errorf("list real servers of %s: %w", vs.VSKey, err)
		}
	}
	wantRS := map[netip.AddrPort]RealServer{}
	for _, rs := range vs.RealServers {
		wantRS[rs.Addr] = rs
	}
	p.noteRealServerDrift(vs.VSKey, prev, have)
	haveRS := map[netip.AddrPort]bool{}
	for _, d := range have {
		ap := destAddr(d)
		haveRS[ap] = true
		rs, ok := wantRS[ap]
		if !ok {
			n, err := p.drain(svc, vs.VSKey, d)
			ops += n
			if err != nil {
				return ops, err
			}
			continue
		}
		delete(p.draining, drainKey{vs.VSKey, ap})
		if d.Weight != rs.Weight || d.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask != mobyipvs.ConnectionFlagMasq {
			if err := p.handle.UpdateDestination(svc, toDest(rs)); err != nil {
				return ops, fmt.Errorf("update real server %s of %s: %w", ap, vs.VSKey, err)
			}
			ops++
		}
	}
	for _, rs := range vs.RealServers {
		if haveRS[rs.Addr] {
			continue
		}
		if err := p.handle.NewDestination(svc, toDest(rs)); err != nil && !isExist(err) {
			return ops, fmt.Errorf("add real server %s to %s: %w", rs.Addr, vs.VSKey, err)
		}
		ops++
	}
	return ops, nil
}

func (p *Proxier) drainsUnder(k VSKey) bool {
	for dk := range p.draining {
		if dk.VS == k {
			return true
		}
	}
	return false
}

// drain handles a real server that is no longer wanted. A TCP one with
// connections is set to weight 0, so IPVS schedules nothing new to it, and
// deleted on a later Sync once IPVS counts no active or inactive
// connection on it, or once the grace period is over. Without connections,
// or for UDP and SCTP (whose IPVS "connections" only time out, and whose
// flows pkg/conntrack clears), it is deleted at once.
func (p *Proxier) drain(svc *mobyipvs.Service, vs VSKey, d *mobyipvs.Destination) (int, error) {
	key := drainKey{vs, destAddr(d)}
	now := p.clock.Now()
	conns := d.ActiveConnections + d.InactiveConnections
	deadline, pending := p.draining[key]
	if !pending {
		deadline = now.Add(p.grace)
	}
	if vs.Protocol != model.TCP || conns == 0 || !now.Before(deadline) {
		if err := p.handle.DelDestination(svc, d); err != nil && !isNotExist(err) {
			return 0, fmt.Errorf("delete real server %s of %s: %w", key.RS, vs, err)
		}
		delete(p.draining, key)
		p.log.Debug("deleted real server", "vs", vs, "rs", key.RS, "connections", conns, "drainedFor", p.grace-deadline.Sub(now))
		return 1, nil
	}
	p.draining[key] = deadline
	if d.Weight == 0 {
		return 0, nil
	}
	z := *d
	z.Weight = 0
	if err := p.handle.UpdateDestination(svc, &z); err != nil {
		return 0, fmt.Errorf("drain real server %s of %s: %w", key.RS, vs, err)
	}
	p.log.Debug("draining real server", "vs", vs, "rs", key.RS, "connections", conns, "until", deadline.Format(time.RFC3339))
	return 1, nil
}
