//go:build ipvsvm

package ipvs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// What reading the kernel's IPVS state costs, at 1k and 10k virtual
// servers of 10 real servers each, to choose the periodic drift check:
//
//	IPVS_VM_RUN='^$' IPVS_VM_ARGS='-test.bench=VMCheckCost -test.benchtime=5x' \
//	  IPVS_VM_TIMEOUT=1200 IPVS_VM_MEM=1024 hack/ipvs-vm/run.sh CACHE
//
// The VM runs under TCG (no KVM): absolute times are many times the real
// machine's; the ratios between the ways of reading are what counts.
func BenchmarkVMCheckCost(b *testing.B) {
	h, err := newKernelHandle("")
	if err != nil {
		b.Fatal(err)
	}
	links, err := newNetlinkLinks("")
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1000, 10000} {
		populate(b, h, links, n, 10)
		b.Run(fmt.Sprintf("%d/GetServices", n), func(b *testing.B) {
			for b.Loop() {
				svcs, err := h.GetServices()
				if err != nil || len(svcs) != n {
					b.Fatalf("%d services, %v", len(svcs), err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d/GetServices+GetDestinations", n), func(b *testing.B) {
			for b.Loop() {
				svcs, err := h.GetServices()
				if err != nil {
					b.Fatal(err)
				}
				rs := 0
				for _, s := range svcs {
					ds, err := h.GetDestinations(s)
					if err != nil {
						b.Fatal(err)
					}
					rs += len(ds)
				}
				if rs != 10*n {
					b.Fatalf("%d real servers", rs)
				}
			}
		})
		b.Run(fmt.Sprintf("%d/procfs", n), func(b *testing.B) {
			for b.Loop() {
				data, err := os.ReadFile("/proc/net/ip_vs")
				if err != nil {
					b.Fatal(err)
				}
				vs, rs := parseProcIPVS(b, data)
				if vs != n || rs != 10*n {
					b.Fatalf("%d virtual servers, %d real servers", vs, rs)
				}
			}
		})
		b.Run(fmt.Sprintf("%d/Addrs", n), func(b *testing.B) {
			for b.Loop() {
				as, err := links.Addrs(LinkName)
				if err != nil || len(as) != n {
					b.Fatalf("%d addresses, %v", len(as), err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d/nftGeneration", n), func(b *testing.B) {
			r, err := nft.NewReader(0)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			for b.Loop() {
				if _, err := r.Generation(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	if err := h.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := links.DeleteLink(LinkName); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkVMPeriodicSync is what the periodic Sync costs when nothing
// drifted, at 1k and 10k Services of 10 endpoints: the Proxier's own
// check, with its writes asserted to be none.
//
//	IPVS_VM_RUN='^$' IPVS_VM_ARGS='-test.bench=VMPeriodicSync -test.benchtime=5x' \
//	  IPVS_VM_TIMEOUT=1500 IPVS_VM_MEM=1024 hack/ipvs-vm/run.sh CACHE
func BenchmarkVMPeriodicSync(b *testing.B) {
	for _, n := range vmSizes(b) {
		p, err := New(flowspec.Config(), WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(*vmLogLevel)}))))
		if err != nil {
			b.Fatal(err)
		}
		var sps []*model.ServicePort
		for i := range n {
			vip := fmt.Sprintf("10.96.%d.%d", i>>8, i&0xff)
			var eps []string
			for j := range 10 {
				eps = append(eps, fmt.Sprintf("10.244.%d.%d:%d", i>>8, i&0xff, 8000+j))
			}
			sps = append(sps, sp(fmt.Sprintf("s%05d", i), model.TCP, vip, 80, eps...))
		}
		s := state(sps...)
		s.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
		ctx := context.Background()
		start := time.Now()
		if err := p.Sync(ctx, s, model.Compute(nil, s)); err != nil {
			b.Fatal(err)
		}
		// Progress on the console: the first Sync at 10k takes minutes under TCG.
		fmt.Fprintf(os.Stderr, "PXD-VM: first Sync of %d Services: %v\n", n, time.Since(start))
		b.Run(fmt.Sprintf("%d", n), func(b *testing.B) {
			for b.Loop() {
				if err := p.Sync(ctx, s, model.Diff{}); err != nil {
					b.Fatal(err)
				}
				if st := p.LastSyncStats(); st.KernelOps != 0 || st.DriftRepairs != 0 {
					b.Fatalf("nothing drifted, yet %+v", st)
				}
			}
		})
		if err := p.Cleanup(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

var vmLogLevel = flag.Int("vm-log-level", int(slog.LevelWarn), "slog level of BenchmarkVMPeriodicSync's Proxier (-4: debug)")

var vmSizesFlag = flag.String("vm-sizes", "1000,10000", "Service counts of BenchmarkVMPeriodicSync")

func vmSizes(b *testing.B) []int {
	var out []int
	for _, f := range strings.Split(*vmSizesFlag, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			b.Fatalf("-vm-sizes: %v", err)
		}
		out = append(out, n)
	}
	return out
}

// populate makes the kernel hold n virtual servers of rs real servers
// each, their addresses bound to proxyd-ipvs0.
func populate(b *testing.B, h Handle, links Links, n, rs int) {
	b.Helper()
	if err := h.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := links.EnsureLink(LinkName); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		s := &mobyipvs.Service{Address: ipBytes(vip), Protocol: 6, Port: 80, SchedName: "rr", AddressFamily: 2, Netmask: 0xffffffff}
		if err := h.NewService(s); err != nil {
			b.Fatal(err)
		}
		for j := range rs {
			ep := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
			d := &mobyipvs.Destination{Address: ipBytes(ep), Port: uint16(8000 + j), Weight: 1, ConnectionFlags: mobyipvs.ConnectionFlagMasq}
			if err := h.NewDestination(s, d); err != nil {
				b.Fatal(err)
			}
		}
		if err := links.AddAddr(LinkName, vip); err != nil {
			b.Fatal(err)
		}
	}
}

// parseProcIPVS reads /proc/net/ip_vs into keys and real servers, as a
// check built on it would have to.
func parseProcIPVS(b *testing.B, data []byte) (vs, rs int) {
	b.Helper()
	table := map[VSKey][]RealServer{}
	var cur VSKey
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP"):
			ap := hexAddrPort(b, f[1])
			cur = VSKey{Addr: ap.Addr(), Port: ap.Port()}
			table[cur] = nil
		case len(f) >= 4 && f[0] == "->" && f[1] != "RemoteAddress:Port":
			w, err := strconv.Atoi(f[3])
			if err != nil {
				b.Fatal(err)
			}
			table[cur] = append(table[cur], RealServer{Addr: hexAddrPort(b, f[1]), Weight: w})
		}
	}
	for _, r := range table {
		rs += len(r)
	}
	return len(table), rs
}

func hexAddrPort(b *testing.B, s string) netip.AddrPort {
	i := strings.LastIndexByte(s, ':')
	a, err := hex.DecodeString(s[:i])
	if err != nil || len(a) != 4 {
		b.Fatalf("address %q", s)
	}
	p, err := strconv.ParseUint(s[i+1:], 16, 16)
	if err != nil {
		b.Fatal(err)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a)), uint16(p))
}
