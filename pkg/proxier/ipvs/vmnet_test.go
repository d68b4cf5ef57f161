//go:build ipvsvm

package ipvs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// This file holds the VM tests that send real packets: namespaces joined
// by veth pairs stand for a client outside the cluster and for Pods.

// listen accepts and closes connections on each address until the test ends.
func listen(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		serve(t, ln, func(net.Conn) {})
	}
}

// serve runs answer on every connection ln accepts, closing each after,
// until the test ends.
func serve(t *testing.T, ln net.Listener, answer func(net.Conn)) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			answer(c)
			c.Close()
		}
	}()
}

// dial opens a TCP connection and classifies the outcome.
func dial(t *testing.T, to string) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := net.DialTimeout("tcp", to, 3*time.Second)
	d := time.Since(start)
	var ne net.Error
	switch {
	case err == nil:
		c.Close()
		return "connected", d
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", d
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout", d
	}
	return "error: " + err.Error(), d
}

var (
	peersMu sync.Mutex
	peers   = map[string]netns.NsHandle{}
)

// peer returns a network namespace joined to the VM by a veth pair named
// <name>0 (VM side, address gw/len) and <name>1 (inside, address ip/len,
// default route via gw), created on first use. Its packets to a ClusterIP
// are forwarded traffic (prerouting, LOCAL_IN), not the node's own.
// twoPods is the topology most VM tests share: forwarding on, Pods
// 10.244.1.11 and 10.244.2.12 on links of their own, the client namespace,
// pod1 answering, and a Proxier that removes its rules after the test.
func twoPods(t *testing.T) (pod1, pod2, cl netns.NsHandle, p *Proxier) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	pod1 = peer(t, "vp", "10.244.1.1/24", "10.244.1.11/24")
	pod2 = peer(t, "vq", "10.244.2.1/24", "10.244.2.12/24")
	cl = client(t)
	whoAmI(t, pod1, "10.244.1.11:8080")
	p, err := New(flowspec.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Cleanup(context.Background()) })
	return pod1, pod2, cl, p
}

func peer(t *testing.T, name, gwCIDR, ipCIDR string) netns.NsHandle {
	t.Helper()
	peersMu.Lock()
	defer peersMu.Unlock()
	if ns, ok := peers[name]; ok {
		return ns
	}
	ns, err := makePeer(name, gwCIDR, ipCIDR)
	if err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
	peers[name] = ns
	return ns
}

// client is a host outside the cluster CIDR.
func client(t *testing.T) netns.NsHandle {
	return peer(t, "vc", "192.168.99.1/24", "192.168.99.2/24")
}

func makePeer(name, gwCIDR, ipCIDR string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		return 0, err
	}
	if err := netns.Set(orig); err != nil {
		return 0, err
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "0"}, PeerName: name + "1"}); err != nil {
		return 0, fmt.Errorf("veth: %w", err)
	}
	outside, _ := netlink.LinkByName(name + "0")
	inside, _ := netlink.LinkByName(name + "1")
	if err := netlink.LinkSetNsFd(inside, int(ns)); err != nil {
		return 0, err
	}
	gw, err := netlink.ParseAddr(gwCIDR)
	if err != nil {
		return 0, err
	}
	if err := netlink.AddrAdd(outside, gw); err != nil {
		return 0, err
	}
	if err := netlink.LinkSetUp(outside); err != nil {
		return 0, err
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	in, err := h.LinkByName(name + "1")
	if err != nil {
		return 0, err
	}
	ip, err := netlink.ParseAddr(ipCIDR)
	if err != nil {
		return 0, err
	}
	for _, err := range []error{h.LinkSetUp(lo), h.AddrAdd(in, ip), h.LinkSetUp(in)} {
		if err != nil {
			return 0, err
		}
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: in.Attrs().Index, Gw: gw.IP}); err != nil {
		return 0, fmt.Errorf("default route: %w", err)
	}
	return ns, nil
}

// inNS runs f on a thread switched into ns; the thread dies afterwards.
func inNS(ns netns.NsHandle, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(ns); err != nil {
			panic(err) // a test helper in a throw-away VM
		}
		f()
	}()
	<-done
}

// dialFrom is dial from inside ns.
func dialFrom(t *testing.T, ns netns.NsHandle, to string) (got string, d time.Duration) {
	inNS(ns, func() { got, d = dial(t, to) })
	return got, d
}

// whoAmI serves on addr inside ns and answers each connection with the
// source address it sees, so a test can tell whether it was masqueraded.
func whoAmI(t *testing.T, ns netns.NsHandle, addr string) {
	t.Helper()
	var ln net.Listener
	var err error
	inNS(ns, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln, func(c net.Conn) {
		ra, _ := c.RemoteAddr().(*net.TCPAddr)
		fmt.Fprintf(c, "%s\n", ra.IP)
	})
}

// ask connects to to from ns (the VM itself for ns < 0) and returns the
// answer.
func ask(t *testing.T, ns netns.NsHandle, to string) string {
	t.Helper()
	var out string
	do := func() {
		c, err := net.DialTimeout("tcp", to, 3*time.Second)
		if err != nil {
			out = "error: " + err.Error()
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			out = "error: " + err.Error()
			return
		}
		out = strings.TrimSpace(string(b))
	}
	if ns < 0 {
		do()
	} else {
		inNS(ns, do)
	}
	return out
}

// TestVMPackets checks the proxyd-ipvs table on real packets: what IPVS
// does not take is refused, a client outside the cluster CIDR and the node
// itself are masqueraded, a Pod is not, and a Pod reaching itself through
// its Service is (hairpin).
func TestVMPackets(t *testing.T) {
	pod1, pod2, cl, p := twoPods(t)
	s := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080"))
	s.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	if err := p.Sync(context.Background(), s, model.Compute(nil, s)); err != nil {
		t.Fatal(err)
	}
	// The node routes the service range towards the Pods, as a real node's
	// default route would: without proxyd's rules an unallocated address
	// would just be sent on.
	vp, err := netlink.LinkByName("vp0")
	if err != nil {
		t.Fatal(err)
	}
	_, svcNet, _ := net.ParseCIDR("10.96.0.0/16")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: vp.Attrs().Index, Dst: svcNet}); err != nil {
		t.Fatal(err)
	}
	defer netlink.RouteDel(&netlink.Route{LinkIndex: vp.Attrs().Index, Dst: svcNet})
	// A listener on a ClusterIP port no virtual server has: only
	// reject-input/-output keep it from answering.
	listen(t, "10.96.0.10:81")
	for _, c := range []struct {
		what, to string
		from     netns.NsHandle
	}{
		{"a port the Service does not have, from the node", "10.96.0.10:81", -1},
		{"a port the Service does not have, from a client", "10.96.0.10:81", cl},
		{"an unallocated address of the service range, from the node", "10.96.0.99:80", -1},
		{"an unallocated address of the service range, from a client", "10.96.0.99:80", cl},
	} {
		var got string
		var d time.Duration
		if c.from < 0 {
			got, d = dial(t, c.to)
		} else {
			got, d = dialFrom(t, c.from, c.to)
		}
		t.Logf("%s: %s after %v", c.what, got, d.Round(time.Millisecond))
		if got != "refused" {
			t.Errorf("%s: %s, want refused", c.what, got)
		}
	}
	for _, c := range []struct {
		what string
		from netns.NsHandle
		want string
	}{
		{"a client outside the cluster CIDR is masqueraded", cl, "10.244.1.1"},
		{"the node itself is masqueraded", -1, "10.244.1.1"},
		{"a Pod of another node-local subnet keeps its address", pod2, "10.244.2.12"},
		{"a Pod reaching itself through its Service is masqueraded (hairpin)", pod1, "10.244.1.1"},
	} {
		got := ask(t, c.from, "10.96.0.10:80")
		t.Logf("%s: the Pod sees %s", c.what, got)
		if got != c.want {
			t.Errorf("%s: the Pod sees %q, want %q", c.what, got, c.want)
		}
	}
	// Control: without proxyd's nftables table IPVS alone does not
	// masquerade, so the rules above are what did it.
	if err := (&nftFirewall{}).Delete(); err != nil {
		t.Fatal(err)
	}
	if got := ask(t, cl, "10.96.0.10:80"); got != "192.168.99.2" {
		t.Errorf("without the nftables table the Pod sees %q, want the client's own 192.168.99.2", got)
	}
}

// TestVMGracefulWithALiveConnection sends a real connection through IPVS
// to a real server on this VM, so IPVS counts it, and checks the real
// server drains at weight 0 until the grace period ends.
func TestVMGracefulWithALiveConnection(t *testing.T) {
	h := vmHandle(t)
	lab := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "lab0"}}
	if err := netlink.LinkAdd(lab); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(lab)
	if err := netlink.LinkSetUp(lab); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.244.1.11", "10.244.1.12"} {
		if err := netlink.AddrAdd(lab, hostAddr(addr(ip))); err != nil {
			t.Fatal(err)
		}
	}
	for _, ap := range []string{"10.244.1.11:8080", "10.244.1.12:8080"} {
		ln, err := net.Listen("tcp", ap)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s\n", ln.Addr())
				go func() { buf := make([]byte, 1); c.Read(buf); c.Close() }()
			}
		}()
	}
	clk := clocktesting.NewFakeClock(time.Now())
	p, err := New(flowspec.Config(), WithClock(clk), WithGracePeriod(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Cleanup(context.Background())
	ctx := context.Background()
	two := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080"))
	if err := p.Sync(ctx, two, model.Compute(nil, two)); err != nil {
		t.Fatal(err)
	}
	// Connect until one connection lands on 10.244.1.11 and keep it open.
	var keep net.Conn
	for range 10 {
		c, err := net.DialTimeout("tcp", "10.96.0.10:80", 3*time.Second)
		if err != nil {
			t.Fatalf("connect through IPVS: %v", err)
		}
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if strings.HasPrefix(string(buf[:n]), "10.244.1.11:8080") {
			keep = c
			break
		}
		c.Close()
	}
	if keep == nil {
		t.Fatal("no connection reached 10.244.1.11 in 10 tries")
	}
	defer keep.Close()
	t.Logf("kernel table with a live connection:\n%s", dumpConns(t, h))

	one := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.12:8080"))
	if err := p.Sync(ctx, one, model.Compute(two, one)); err != nil {
		t.Fatal(err)
	}
	draining := "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 0\n  -> 10.244.1.12:8080 Masq 1\n"
	if got := withoutForeign(dumpHandle(t, h)); got != draining {
		t.Fatalf("after removing 10.244.1.11 with a live connection:\n%s\nwant:\n%s", got, draining)
	}
	// The open connection still works while draining.
	if _, err := keep.Write([]byte("x")); err != nil {
		t.Errorf("draining connection broken: %v", err)
	}
	clk.Step(time.Minute)
	if err := p.Sync(ctx, one, model.Diff{}); err != nil {
		t.Fatal(err)
	}
	gone := "TCP  10.96.0.10:80 rr\n  -> 10.244.1.12:8080 Masq 1\n"
	if got := withoutForeign(dumpHandle(t, h)); got != gone {
		t.Fatalf("after the grace period:\n%s\nwant:\n%s", got, gone)
	}
}

func withoutForeign(s string) string { return strings.Replace(s, foreignDump, "", 1) }

func dumpConns(t *testing.T, h Handle) string {
	t.Helper()
	var b strings.Builder
	svcs, _ := h.GetServices()
	for _, s := range svcs {
		k, _ := keyOf(s)
		fmt.Fprintf(&b, "%s %s\n", k, s.SchedName)
		ds, _ := h.GetDestinations(s)
		for _, d := range ds {
			fmt.Fprintf(&b, "  -> %s weight %d active %d inactive %d\n", destAddr(d), d.Weight, d.ActiveConnections, d.InactiveConnections)
		}
	}
	return b.String()
}

// TestVMExternalPackets checks NodePorts and external IPs on real packets:
// externalTrafficPolicy Cluster masquerades, Local keeps the client's
// address, drops without a local endpoint yet still serves Pods and the
// node from the whole Service (DNAT to the ClusterIP before IPVS), and a
// NodePort without endpoints refuses. The node's address is 192.168.99.1,
// the client's gateway.
func TestVMExternalPackets(t *testing.T) {
	_, pod2, cl, p := twoPods(t)
	remote := func(s *model.ServicePort) *model.ServicePort {
		for i := range s.Endpoints {
			s.Endpoints[i].NodeName = "elsewhere"
		}
		return s
	}
	np := sp("np", model.TCP, "10.96.0.80", 80, "10.244.1.11:8080")
	np.NodePort, np.ExternalIPs, np.ExternalEndpoints = 30080, []netip.Addr{addr("192.0.2.10")}, np.ClusterEndpoints
	npl := sp("npl", model.TCP, "10.96.0.81", 80, "10.244.1.11:8080")
	npl.NodePort, npl.ExternalLocal, npl.ExternalEndpoints = 30081, true, npl.ClusterEndpoints
	npr := remote(sp("npr", model.TCP, "10.96.0.82", 80, "10.244.1.11:8080"))
	npr.NodePort, npr.ExternalLocal = 30082, true
	npe := sp("npe", model.TCP, "10.96.0.83", 80)
	npe.NodePort = 30083
	s := state(np, npl, npr, npe)
	s.Node.IPs = []netip.Addr{addr("192.168.99.1")}
	s.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	if err := p.Sync(context.Background(), s, model.Compute(nil, s)); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel table:\n%s", dumpHandle(t, vmHandle(t)))
	for _, c := range []struct {
		what, to string
		from     netns.NsHandle
		want     string
	}{
		{"a NodePort of policy Cluster from a client is masqueraded", "192.168.99.1:30080", cl, "10.244.1.1"},
		{"an external IP of policy Cluster from a client is masqueraded", "192.0.2.10:80", cl, "10.244.1.1"},
		{"a NodePort of policy Cluster from the node is masqueraded", "192.168.99.1:30080", -1, "10.244.1.1"},
		{"a NodePort of policy Local keeps the client's address", "192.168.99.1:30081", cl, "192.168.99.2"},
		{"a NodePort of policy Local without a local endpoint serves a Pod", "192.168.99.1:30082", pod2, "10.244.2.12"},
		{"a NodePort of policy Local without a local endpoint serves the node, masqueraded", "192.168.99.1:30082", -1, "10.244.1.1"},
	} {
		got := ask(t, c.from, c.to)
		t.Logf("%s: the Pod sees %s", c.what, got)
		if got != c.want {
			t.Errorf("%s: the Pod sees %q, want %q", c.what, got, c.want)
		}
	}
	for _, c := range []struct {
		what, to, want string
		from           netns.NsHandle
	}{
		{"a NodePort of policy Local without a local endpoint, from a client", "192.168.99.1:30082", "timeout", cl},
		{"a NodePort without endpoints, from a client", "192.168.99.1:30083", "refused", cl},
		{"a NodePort without endpoints, from the node", "192.168.99.1:30083", "refused", -1},
	} {
		var got string
		var d time.Duration
		if c.from < 0 {
			got, d = dial(t, c.to)
		} else {
			got, d = dialFrom(t, c.from, c.to)
		}
		t.Logf("%s: %s after %v", c.what, got, d.Round(time.Millisecond))
		if got != c.want {
			t.Errorf("%s: %s, want %s", c.what, got, c.want)
		}
	}
}
