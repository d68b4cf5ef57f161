//go:build ipvsvm

// This file runs inside the qemu VM that hack/ipvs-vm/run.sh boots: a
// kernel with ip_vs, dummy and nf_tables, where the test is PID 1's child
// and may change anything. Never run it on a real host.

package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func TestMain(m *testing.M) {
	if os.Getenv("PROXYD_IPVS_VM") != "1" {
		fmt.Fprintln(os.Stderr, "ipvsvm tests change the kernel's IPVS table; they only run in the VM of hack/ipvs-vm/run.sh (PROXYD_IPVS_VM=1)")
		os.Exit(2)
	}
	// /init has no ip(8): bring loopback up here, or no local connection
	// (the node's own traffic to a ClusterIP) gets anywhere.
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loopback:", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

func vmHandle(t *testing.T) Handle {
	t.Helper()
	h, err := newKernelHandle("")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func bindLo(t *testing.T, ips ...string) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range ips {
		a := hostAddr(addr(ip))
		if err := netlink.AddrAdd(lo, a); err != nil && !errors.Is(err, syscall.EEXIST) {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netlink.AddrDel(lo, a) })
	}
}

func TestVMKernelAnswers(t *testing.T) {
	h := vmHandle(t)
	plain := svc4("10.96.0.30", 80, "rr")
	sticky := svc4("10.96.0.31", 80, "rr")
	sticky.Flags, sticky.Timeout = flagPersistent, 60
	drained := svc4("10.96.0.32", 80, "rr")
	bindLo(t, "10.96.0.30", "10.96.0.31", "10.96.0.32")
	// Listeners on the VIPs: a connection IPVS lets through gets accepted,
	// so "refused" can only come from IPVS itself.
	listen(t, "10.96.0.30:80", "10.96.0.31:80", "10.96.0.32:80")
	if got, _ := dial(t, "10.96.0.30:80"); got != "connected" {
		t.Fatalf("from the node to a listener on a VIP without virtual server: %s", got)
	}
	if got, _ := dialFrom(t, client(t), "10.96.0.30:80"); got != "connected" {
		t.Fatalf("from the client to a listener on a VIP without virtual server: %s", got)
	}

	t.Run("errors are the ones the Fake returns", func(t *testing.T) {
		for _, c := range []struct {
			what string
			err  error
			want syscall.Errno
		}{
			{"delete a missing service", h.DelService(plain), syscall.ESRCH},
			{"update a missing service", h.UpdateService(plain), syscall.ESRCH},
			{"add a destination to a missing service", h.NewDestination(plain, dst("10.244.1.11:8080", 1)), syscall.ESRCH},
			{"add a service with an unloaded scheduler", h.NewService(svc4("10.96.0.32", 80, "mh")), syscall.ENOENT},
		} {
			if !errors.Is(c.err, c.want) {
				t.Errorf("%s: %v, want %v", c.what, c.err, c.want)
			}
		}
		if err := h.NewService(plain); err != nil {
			t.Fatal(err)
		}
		if err := h.NewService(plain); !errors.Is(err, syscall.EEXIST) {
			t.Errorf("add a service twice: %v, want EEXIST", err)
		}
		if err := h.DelDestination(plain, dst("10.244.1.11:8080", 1)); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("delete a missing destination: %v, want ENOENT", err)
		}
		if err := h.UpdateDestination(plain, dst("10.244.1.11:8080", 1)); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("update a missing destination: %v, want ENOENT", err)
		}
		if ds, err := h.GetDestinations(svc4("10.96.0.99", 80, "rr")); err != nil || len(ds) != 0 {
			t.Errorf("destinations of a missing service: %v %v, want none", ds, err)
		}
		svcs, _ := h.GetServices()
		if len(svcs) != 1 || svcs[0].Flags&flagHashed == 0 {
			t.Errorf("read back %+v, want one hashed service", svcs)
		}
	})

	t.Run("a virtual server without real servers", func(t *testing.T) {
		if err := h.NewService(sticky); err != nil {
			t.Fatal(err)
		}
		if err := h.NewService(drained); err != nil {
			t.Fatal(err)
		}
		if err := h.NewDestination(drained, dst("10.244.1.11:8080", 0)); err != nil {
			t.Fatal(err)
		}
		ns := client(t)
		for _, c := range []struct {
			what, to string
			fromNode bool
			want     string
		}{
			{"forwarded, not persistent", "10.96.0.30:80", false, "refused"},
			{"forwarded, persistent", "10.96.0.31:80", false, "refused"},
			{"from the node, not persistent", "10.96.0.30:80", true, "refused"},
			{"from the node, persistent", "10.96.0.31:80", true, "refused"},
			{"forwarded, only a weight-0 real server", "10.96.0.32:80", false, "refused"},
			{"from the node, only a weight-0 real server", "10.96.0.32:80", true, "refused"},
		} {
			var got string
			var d time.Duration
			if c.fromNode {
				got, d = dial(t, c.to)
			} else {
				got, d = dialFrom(t, ns, c.to)
			}
			t.Logf("IPVS without real servers, %s: %s after %v", c.what, got, d.Round(time.Millisecond))
			if got != c.want {
				t.Errorf("%s: %s, want %s", c.what, got, c.want)
			}
		}
	})
	for _, s := range []*mobyipvs.Service{plain, sticky, drained} {
		if err := h.DelService(s); err != nil {
			t.Error(err)
		}
	}
}

// vmState is three Services: a dual-stack TCP one, a UDP one with session
// affinity and an SCTP one.
func vmState() *model.State {
	web := sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080", "10.244.1.13:8080", "[fd00:10:244:1::11]:8080", "[fd00:10:244:1::12]:8080")
	web.ClusterIPs = append(web.ClusterIPs, addr("fd00:10:96::10"))
	dns := sp("dns", model.UDP, "10.96.0.20", 53, "10.244.1.11:53", "10.244.1.12:53")
	dns.AffinitySeconds = 300
	s := state(web, dns, sp("sctp", model.SCTP, "10.96.0.60", 9999, "10.244.1.11:9999"), vmNodePort(true))
	s.Node.IPs = []netip.Addr{addr("10.88.0.2")}
	return s
}

// vmNodePort is a NodePort Service (30080 on the node's 10.88.0.2), with
// the external IP 192.0.2.10 when external is set.
func vmNodePort(external bool) *model.ServicePort {
	np := sp("np", model.TCP, "10.96.0.80", 80, "10.244.1.11:8080", "10.244.1.12:8080")
	np.NodePort = 30080
	if external {
		np.ExternalIPs = []netip.Addr{addr("192.0.2.10")}
	}
	np.ExternalEndpoints = np.ClusterEndpoints
	return np
}

const foreignDump = "TCP  192.168.77.1:80 wlc\n  -> 192.168.77.10:80 Masq 3\n"

func withForeign(s string) string {
	// 192.168.77.1 sorts after 10.96.x and before fd00::.
	i := strings.Index(s, "TCP  [fd00")
	if i < 0 {
		return s + foreignDump
	}
	return s[:i] + foreignDump + s[i:]
}

func TestVMProxier(t *testing.T) {
	h := vmHandle(t)
	foreign := svc4("192.168.77.1", 80, "wlc")
	if err := h.NewService(foreign); err != nil {
		t.Fatal(err)
	}
	if err := h.NewDestination(foreign, dst("192.168.77.10:80", 3)); err != nil {
		t.Fatal(err)
	}
	defer h.DelService(foreign)
	ctx := context.Background()

	for _, sched := range []string{"rr", "sh"} {
		t.Run(sched, func(t *testing.T) {
			start := time.Now()
			p, err := New(flowspec.Config(), WithScheduler(sched))
			if err != nil {
				t.Fatal(err)
			}
			s1 := vmState()
			if err := p.Sync(ctx, s1, model.Compute(nil, s1)); err != nil {
				t.Fatal(err)
			}
			t.Logf("first sync with %s: %v, %+v", sched, time.Since(start).Round(time.Millisecond), p.LastSyncStats())
			want := withForeign(stripComments(Render(s1, sched).String()))
			if got := dumpHandle(t, h); got != want {
				t.Fatalf("kernel table:\n%s\nwant:\n%s", got, want)
			}
			t.Logf("kernel table after sync (%s):\n%s", sched, dumpHandle(t, h))
			checkBound(t, Render(s1, sched).VIPs())
			if got := dumpHandle(t, h); !strings.Contains(got, "TCP  10.88.0.2:30080 "+sched+"\n  -> 10.244.1.11:8080 Masq 1\n  -> 10.244.1.12:8080 Masq 1\n") ||
				!strings.Contains(got, "TCP  192.0.2.10:80 "+sched+"\n  -> 10.244.1.11:8080 Masq 1\n  -> 10.244.1.12:8080 Masq 1\n") {
				t.Fatalf("NodePort or external IP virtual server not read back:\n%s", got)
			}
			if b := Render(s1, sched).VIPs(); !slices.Contains(b, addr("192.0.2.10")) || slices.Contains(b, addr("10.88.0.2")) {
				t.Fatalf("bound %v: want the external IP, not the node's address", b)
			}
			if !tableExists(t) {
				t.Fatal("nftables table missing")
			}

			// Changes: web loses an endpoint (no connections: deleted at
			// once), dns goes, a persistent Service without endpoints comes.
			web := sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.13:8080", "[fd00:10:244:1::11]:8080", "[fd00:10:244:1::12]:8080")
			web.ClusterIPs = append(web.ClusterIPs, addr("fd00:10:96::10"))
			empty := sp("empty", model.TCP, "10.96.0.30", 80)
			empty.AffinitySeconds = 60
			// np loses its external IP and keeps its NodePort, which
			// Cleanup must then find by its key: its address is not bound.
			s2 := state(web, empty, sp("sctp", model.SCTP, "10.96.0.60", 9999, "10.244.1.11:9999"), vmNodePort(false))
			s2.Node.IPs = s1.Node.IPs
			if err := p.Sync(ctx, s2, model.Compute(s1, s2)); err != nil {
				t.Fatal(err)
			}
			want = withForeign(stripComments(Render(s2, sched).String()))
			if got := dumpHandle(t, h); got != want {
				t.Fatalf("kernel table after update:\n%s\nwant:\n%s", got, want)
			}
			checkBound(t, Render(s2, sched).VIPs())
			if got := dumpHandle(t, h); strings.Contains(got, "192.0.2.10") || !strings.Contains(got, "TCP  10.88.0.2:30080 ") {
				t.Fatalf("after the external IP went:\n%s", got)
			}
			// A listener on the VIP proves the refusal is IPVS's.
			ln, err := net.Listen("tcp", "10.96.0.30:80")
			if err != nil {
				t.Fatal(err)
			}
			got, d := dial(t, "10.96.0.30:80")
			t.Logf("proxyd, persistent Service without endpoints, from the node: %s after %v", got, d.Round(time.Millisecond))
			if got != "refused" {
				t.Errorf("persistent Service without endpoints, from the node: %s, want refused", got)
			}
			got, d = dialFrom(t, client(t), "10.96.0.30:80")
			t.Logf("proxyd, persistent Service without endpoints, forwarded: %s after %v", got, d.Round(time.Millisecond))
			if got != "refused" {
				t.Errorf("persistent Service without endpoints, forwarded: %s, want refused", got)
			}
			ln.Close()

			if err := p.Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
			if got := dumpHandle(t, h); got != foreignDump {
				t.Fatalf("after cleanup:\n%s\nwant only the foreign virtual server", got)
			}
			if _, err := netlink.LinkByName(LinkName); err == nil {
				t.Fatal("proxyd-ipvs0 left after cleanup")
			}
			if tableExists(t) {
				t.Fatal("nftables table left after cleanup")
			}
			if err := p.Cleanup(ctx); err != nil {
				t.Fatalf("second cleanup: %v", err)
			}
		})
	}

	t.Run("a scheduler whose module is missing fails the sync clearly", func(t *testing.T) {
		p, err := New(flowspec.Config(), WithScheduler("mh"))
		if err != nil {
			t.Fatal(err)
		}
		s := vmState()
		err = p.Sync(ctx, s, model.Compute(nil, s))
		t.Logf("sync with mh: %v", err)
		if err == nil || !strings.Contains(err.Error(), `ipvs scheduler "mh" is not available`) {
			t.Errorf("err = %v", err)
		}
		if err := p.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		if got := dumpHandle(t, h); got != foreignDump {
			t.Fatalf("after cleanup:\n%s", got)
		}
	})
}

func checkBound(t *testing.T, vips []netip.Addr) {
	t.Helper()
	l, err := newNetlinkLinks("")
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.Addrs(LinkName)
	if err != nil {
		t.Fatal(err)
	}
	if !equalAddrs(got, vips) {
		t.Fatalf("bound to %s: %v, want %v", LinkName, got, vips)
	}
	for _, a := range vips {
		routes, err := netlink.RouteGet(net.IP(a.AsSlice()))
		if err != nil || len(routes) == 0 || routes[0].Type != unix.RTN_LOCAL {
			t.Errorf("route to %v: %+v %v, want a local route", a, routes, err)
		}
	}
}

func tableExists(t *testing.T) bool {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	return err == nil
}
