package ipvs

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/proxyd/proxyd/pkg/nft"
)

// Kernel reads back what IPVS mode holds in the kernel — the IPVS table,
// the addresses bound to proxyd-ipvs0, the inet proxyd-ipvs nftables table
// and IPVS's persistence templates — so that proxyd explain can trace it
// and compare it with what proxyd means to program. It only reads.
type Kernel struct {
	Handle   Handle
	Links    Links
	Firewall Firewall
	// Conns is IPVS's connection table (default /proc/net/ip_vs_conn, of
	// the network namespace the process is in).
	Conns string
	close func()
}

// OpenKernel opens IPVS, rtnetlink and nf_tables in the network namespace
// at netnsPath ("" for the current one). It fails with an error wrapping
// ErrIPVSUnavailable when the kernel has no IPVS.
func OpenKernel(netnsPath string) (*Kernel, error) {
	h, err := newKernelHandle(netnsPath)
	if err != nil {
		return nil, err
	}
	links, err := newNetlinkLinks(netnsPath)
	closeHandle := func() {
		if c, ok := h.(interface{ Close() }); ok {
			c.Close()
		}
	}
	if err != nil {
		closeHandle()
		return nil, err
	}
	return &Kernel{Handle: h, Links: links, Firewall: &nftFirewall{netnsPath: netnsPath},
		close: func() { closeHandle(); links.h.Close() }}, nil
}

// Close releases the sockets OpenKernel opened.
func (k *Kernel) Close() {
	if k.close != nil {
		k.close()
	}
}

// KernelState is what the kernel held when Read looked.
type KernelState struct {
	// Table holds every address-based virtual server of the kernel's IPVS
	// (proxyd's or not: IPVS serves them all), with its real servers.
	Table *Table
	// Owned are the virtual servers that are proxyd's: on an address
	// bound to proxyd-ipvs0, or recorded in the node-servers sets.
	Owned map[VSKey]bool
	// Bound are the addresses of proxyd-ipvs0.
	Bound []netip.Addr
	// NFT is the inet proxyd-ipvs table, nil when there is none.
	NFT *nft.Table
}

// Read reads the kernel's IPVS table, proxyd-ipvs0's addresses and the
// proxyd-ipvs table; nodeIPs are the node's addresses, which mark the
// virtual servers of NodePorts.
func (k *Kernel) Read(nodeIPs []netip.Addr) (*KernelState, error) {
	t, err := ReadTable(k.Handle, nodeIPs)
	if err != nil {
		return nil, err
	}
	ks := &KernelState{Table: t, Owned: map[VSKey]bool{}}
	if ks.Bound, err = k.Links.Addrs(LinkName); err != nil {
		return nil, err
	}
	if ks.NFT, err = k.Firewall.Read(); err != nil {
		return nil, fmt.Errorf("read nftables table inet %s: %w", TableName, err)
	}
	var recorded []Tuple
	if ks.NFT != nil {
		recorded = nodeServers(ks.NFT)
	}
	for key := range t.Servers {
		ks.Owned[key] = slices.Contains(ks.Bound, key.Addr) || slices.Contains(recorded, Tuple(key))
	}
	return ks, nil
}

// ReadTable reads every address-based virtual server (TCP, UDP or SCTP;
// not fwmark ones) of the kernel's IPVS, with its scheduler, persistence
// and real servers sorted by address. nodeIPs mark the virtual servers on
// the node's own addresses (OnNode). What only proxyd knows (the Service,
// traffic policies) is left empty.
func ReadTable(h Handle, nodeIPs []netip.Addr) (*Table, error) {
	svcs, err := h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("list ipvs services: %w", err)
	}
	t := &Table{Servers: map[VSKey]*VirtualServer{}, NodeIPs: nodeIPs}
	for _, s := range svcs {
		key, ok := keyOf(s)
		if !ok {
			continue
		}
		vs := &VirtualServer{VSKey: key, Scheduler: s.SchedName, OnNode: slices.Contains(nodeIPs, key.Addr)}
		if s.Flags&flagPersistent != 0 {
			vs.Timeout = s.Timeout
		}
		ds, err := h.GetDestinations(s)
		if err != nil {
			return nil, fmt.Errorf("list real servers of %s: %w", key, err)
		}
		for _, d := range ds {
			vs.RealServers = append(vs.RealServers, RealServer{Addr: destAddr(d), Weight: d.Weight})
		}
		slices.SortFunc(vs.RealServers, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
		t.Servers[key] = vs
	}
	return t, nil
}
