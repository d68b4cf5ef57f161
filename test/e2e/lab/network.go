package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// EchoPackage is the import path of the echo binary the lab builds when
// Config.EchoBin and $PROXYD_LAB_ECHO are empty.
const EchoPackage = "github.com/proxyd/proxyd/test/e2e/echo"

// nodeSysctls are set in the node namespace before its links exist. Those
// that are read-only (or missing) in a namespace are logged and skipped.
var nodeSysctls = []struct{ key, value string }{
	{"net.ipv4.ip_forward", "1"},
	{"net.ipv6.conf.all.forwarding", "1"},
	{"net.bridge.bridge-nf-call-iptables", "1"},
	{"net.bridge.bridge-nf-call-ip6tables", "1"},
	{"net.ipv4.conf.all.send_redirects", "0"},
	{"net.ipv4.conf.default.send_redirects", "0"},
	{"net.ipv4.conf.all.route_localnet", "1"},
	{"net.netfilter.nf_conntrack_tcp_be_liberal", "1"},
	// Tests send thousands of connections to VIPs that refuse: without
	// these the kernel rate-limits the ICMP unreachables per client and a
	// refused connection shows up as a timeout.
	{"net.ipv4.icmp_ratelimit", "0"},
	{"net.ipv6.icmp.ratelimit", "0"},
}

// noDADSysctls keep IPv6 addresses (link-local ones too) usable at once.
// They are set in every namespace before links move in.
var noDADSysctls = []struct{ key, value string }{
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
}

// inNetns runs fn on a fresh OS thread switched into the named network
// namespace. Sockets fn creates stay in that namespace after it returns. If
// the thread cannot be switched back it is left locked, so the Go runtime
// destroys it rather than reuse it.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", name, err))
			return // thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext returns a dial function whose sockets live in the network
// namespace ns. Addresses should be IP literals (no DNS inside the lab).
func DialContext(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return DialContextFrom(ns, "")
}

// DialContextFrom is DialContext from the local address src (an IP
// literal of ns; "" lets the kernel choose).
func DialContextFrom(ns, src string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(ns, func() error {
			// FallbackDelay < 0 keeps the dial in this goroutine (no
			// happy-eyeballs racers on other, unswitched threads).
			d := net.Dialer{FallbackDelay: -1}
			if src != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
				if strings.HasPrefix(network, "udp") {
					d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(src)}
				}
			}
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// setSysctls writes sysctls inside ns; each failure is logged, not fatal.
func (l *Lab) setSysctls(ns string, kvs []struct{ key, value string }) {
	_ = inNetns(ns, func() error {
		for _, kv := range kvs {
			path := "/proc/sys/" + strings.ReplaceAll(kv.key, ".", "/")
			if err := os.WriteFile(path, []byte(kv.value), 0o644); err != nil {
				l.logf("lab %s: sysctl %s=%s in %s: %v (continuing)", l.ID, kv.key, kv.value, ns, err)
			}
		}
		return nil
	})
}

// ipBatch runs `ip -n ns -batch -` with one command a line.
func ipBatch(ns string, lines []string) error {
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// buildNetwork creates the namespaces, links, addresses, routes and sysctls
// described in the package doc.
func (l *Lab) buildNetwork(ctx context.Context) error {
	for _, ns := range l.namespaces() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			return fmt.Errorf("create netns %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
		}
		l.setSysctls(ns, noDADSysctls)
	}
	l.setSysctls(l.NodeNS, nodeSysctls)

	node := []string{
		"link set lo up",
		"link add br0 address 02:00:0a:f4:01:01 type bridge forward_delay 0",
		"addr add " + BridgeIP + "/24 dev br0",
		"addr add " + BridgeIPv6 + "/64 dev br0 nodad",
		"link set br0 up",
		// The node IP: a veth pair with both ends in the node namespace.
		"link add eth0 type veth peer name eth0-peer",
		"addr add " + l.NodeIP + "/24 dev eth0",
		"addr add " + l.NodeIPv6 + "/64 dev eth0 nodad",
		"link set eth0 up",
		"link set eth0-peer up",
		"route add default dev eth0",
		"route add ::/0 dev eth0",
		// Node-originated connections to VIPs must pass the first route
		// lookup before output-hook DNAT rewrites them.
		"route add 10.96.0.0/12 dev br0",
		"route add fd00:10:96::/112 dev br0",
	}
	type member struct{ ns, port, ip, ip6 string }
	members := []member{{l.ClientNS, "vclient", ClientIP, ClientIPv6}}
	for i, p := range l.Pods {
		members = append(members, member{p.NS, "vpod" + strconv.Itoa(i+1), p.IP, p.IPv6})
	}
	for _, m := range members {
		node = append(node,
			"link add "+m.port+" type veth peer name eth0 netns "+m.ns,
			"link set "+m.port+" master br0",
			"link set "+m.port+" type bridge_slave hairpin on",
			"link set "+m.port+" up",
		)
	}
	if err := ipBatch(l.NodeNS, node); err != nil {
		return err
	}
	l.setSysctls(l.NodeNS, []struct{ key, value string }{{"net.ipv4.conf.br0.send_redirects", "0"}})
	for _, m := range members {
		if err := ipBatch(m.ns, []string{
			"link set lo up",
			"addr add " + m.ip + "/24 dev eth0",
			"addr add " + m.ip6 + "/64 dev eth0 nodad",
			"link set eth0 up",
			"route add default via " + BridgeIP,
			"route add ::/0 via " + BridgeIPv6,
		}); err != nil {
			return err
		}
	}
	l.logf("lab %s: network up: node %s, client %s, %d pods on br0", l.ID, l.NodeNS, l.ClientNS, len(l.Pods))
	return nil
}

// buildEcho makes sure l.EchoBin names an echo binary.
func (l *Lab) buildEcho(ctx context.Context) error {
	if l.EchoBin == "" {
		l.EchoBin = os.Getenv("PROXYD_LAB_ECHO")
	}
	if l.EchoBin != "" {
		if _, err := os.Stat(l.EchoBin); err != nil {
			return fmt.Errorf("echo binary: %w", err)
		}
		return nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(l.Dir, "echo")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, EchoPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	begin := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s (set Config.EchoBin or PROXYD_LAB_ECHO to skip): %w: %s", EchoPackage, err, buf.String())
	}
	l.EchoBin = out
	l.logf("lab %s: built echo in %.1fs", l.ID, time.Since(begin).Seconds())
	return nil
}

// startPods starts every Pod's echo server and waits until each answers
// from the client namespace.
func (l *Lab) startPods() error {
	for _, p := range l.Pods {
		port := strconv.Itoa(EchoPort)
		if _, err := l.startProcess(tierPod, p.NS, p.Name+".log", l.EchoBin, "serve",
			"--name", p.Name, "--port", port, "--udp-port", port); err != nil {
			return err
		}
	}
	dial := DialContext(l.ClientNS)
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range l.Pods {
		addr := net.JoinHostPort(p.IP, strconv.Itoa(EchoPort))
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c, err := dial(ctx, "tcp", addr)
			cancel()
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("echo server %s at %s: %w\n%s", p.Name, addr, err, tailFile(l.LogPath(p.Name+".log"), 20))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}
