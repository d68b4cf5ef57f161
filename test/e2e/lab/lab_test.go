package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/internal/testenv"
)

// needLab skips unless the test can build a lab.
func needLab(t *testing.T) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedEnv(t, "PROXYD_LAB_BIN", "see hack/build-tools.sh")
}

// startLab starts a lab and closes it when the test ends.
func startLab(t *testing.T, cfg Config) *Lab {
	t.Helper()
	cfg.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// rootNetState is what the root network namespace looks like, to prove the
// lab leaves it alone.
func rootNetState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"-o", "link"}, {"-o", "addr"}, {"route"}, {"-6", "route"}} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		b.Write(out)
	}
	return b.String()
}

func TestLabSmoke(t *testing.T) {
	needLab(t)
	before := rootNetState(t)
	l := startLab(t, Config{})
	t.Logf("lab %s: start %.1fs, readyz %.1fs", l.ID, l.StartDuration.Seconds(), l.ReadyzDuration.Seconds())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("the apiserver answers the Go client", func(t *testing.T) {
		cs, err := l.Clientset()
		if err != nil {
			t.Fatal(err)
		}
		nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list namespaces: %v", err)
		}
		var names []string
		for _, ns := range nss.Items {
			names = append(names, ns.Name)
		}
		if !strings.Contains(strings.Join(names, ","), "kube-system") {
			t.Errorf("namespaces = %v, want kube-system among them", names)
		}
		node, err := cs.CoreV1().Nodes().Get(ctx, l.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get node: %v", err)
		}
		if len(node.Status.Addresses) == 0 || node.Status.Addresses[0].Address != l.NodeIP {
			t.Errorf("node addresses = %v, want InternalIP %s first", node.Status.Addresses, l.NodeIP)
		}
	})

	t.Run("the kubernetes Service has an EndpointSlice for NodeIP:6443", func(t *testing.T) {
		cs, err := l.Clientset()
		if err != nil {
			t.Fatal(err)
		}
		var got string
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			slices, err := cs.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{
				LabelSelector: "kubernetes.io/service-name=kubernetes"})
			if err != nil {
				t.Fatal(err)
			}
			got = ""
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					for _, p := range s.Ports {
						if p.Port != nil {
							got += strings.Join(e.Addresses, ",") + ":" + strconv.Itoa(int(*p.Port)) + " "
						}
					}
				}
			}
			if strings.Contains(got, l.NodeIP+":6443") {
				return
			}
		}
		t.Errorf("kubernetes EndpointSlices: %q, want %s:6443", got, l.NodeIP)
	})

	t.Run("kubectl works as admin", func(t *testing.T) {
		out, err := l.Kubectl(ctx, "get", "nodes", "-o", "wide")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, l.NodeName) || !strings.Contains(out, l.NodeIP) {
			t.Errorf("kubectl get nodes:\n%s", out)
		}
	})

	t.Run("the kube-proxy identity may list EndpointSlices", func(t *testing.T) {
		out, err := l.Kubectl(ctx, "--kubeconfig", l.ProxyKubeconfig, "auth", "can-i", "list", "endpointslices.discovery.k8s.io")
		if err != nil || strings.TrimSpace(out) != "yes" {
			t.Errorf("can-i: %q, %v", out, err)
		}
	})

	t.Run("node sysctls are set", func(t *testing.T) {
		for key, want := range map[string]string{
			"net.ipv4.ip_forward":                "1",
			"net.bridge.bridge-nf-call-iptables": "1",
			"net.ipv4.conf.all.route_localnet":   "1",
			"net.ipv4.conf.br0.send_redirects":   "0",
		} {
			out, err := l.Exec(ctx, l.NodeNS, "cat", "/proc/sys/"+strings.ReplaceAll(key, ".", "/"))
			if err != nil || strings.TrimSpace(out) != want {
				t.Errorf("%s = %q (%v), want %s", key, out, err, want)
			}
		}
	})

	pod1 := l.Pods[0]
	for _, tc := range []struct {
		name, proto, addr string
	}{
		{"tcp from the client reaches pod1", "tcp", net.JoinHostPort(pod1.IP, "8080")},
		{"udp from the client reaches pod1", "udp", net.JoinHostPort(pod1.IP, "8080")},
		{"tcp over IPv6 reaches pod1", "tcp", net.JoinHostPort(pod1.IPv6, "8080")},
		{"udp over IPv6 reaches pod1", "udp", net.JoinHostPort(pod1.IPv6, "8080")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := l.Traffic(ctx, l.ClientNS, tc.proto, tc.addr, 50, 3)
			if err != nil {
				t.Fatal(err)
			}
			if res.Counts["pod1"] != 50 || res.Failed() != 0 || res.StickyViolations != 0 {
				t.Errorf("result = %+v, want 50 answers from pod1", res)
			}
		})
	}

	t.Run("every pod answers from the node", func(t *testing.T) {
		for _, p := range l.Pods {
			res, err := l.Traffic(ctx, l.NodeNS, "tcp", net.JoinHostPort(p.IP, "8080"), 5, 1)
			if err != nil {
				t.Fatal(err)
			}
			if res.Counts[p.Name] != 5 {
				t.Errorf("%s: result = %+v", p.Name, res)
			}
		}
	})

	t.Run("a closed port is refused", func(t *testing.T) {
		res, err := l.Traffic(ctx, l.ClientNS, "tcp", net.JoinHostPort(pod1.IP, "9999"), 5, 1)
		if err != nil {
			t.Fatal(err)
		}
		if res.Errors.Refused != 5 {
			t.Errorf("result = %+v, want 5 refused", res)
		}
	})

	t.Run("HTTPGet reaches the echo server and the apiserver", func(t *testing.T) {
		code, body, err := l.HTTPGet(ctx, l.ClientNS, "http://"+net.JoinHostPort(pod1.IP, "8080")+"/")
		if err != nil || code != 200 || body != "pod1\n" {
			t.Errorf("GET pod1: %d %q %v", code, body, err)
		}
		code, body, err = l.HTTPGet(ctx, l.NodeNS, l.APIServerURL+"/readyz")
		if err != nil || code != 200 || body != "ok" {
			t.Errorf("GET /readyz: %d %q %v", code, body, err)
		}
		// The apiserver listens on NodeIP too: the kubernetes Service's endpoint.
		code, _, err = l.HTTPGet(ctx, l.NodeNS, "https://"+net.JoinHostPort(l.NodeIP, "6443")+"/readyz")
		if err != nil || code != 200 {
			t.Errorf("GET NodeIP:6443/readyz: %d %v", code, err)
		}
	})

	t.Run("StartProcess runs a tracked daemon", func(t *testing.T) {
		p, err := l.StartProcess(l.NodeNS, "sleep.log", "sleep", "600")
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Stop(syscall.SIGTERM, 2*time.Second); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if !p.Exited() {
			t.Error("process has not exited after Stop")
		}
	})

	// Close now (the cleanup's second Close is a no-op) and check it cleaned up.
	pids := l.PIDs()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pxd-"+l.ID+"-") {
			t.Errorf("netns %s left after Close", e.Name())
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists after Close (kill 0: %v)", pid, err)
		}
	}
	if _, err := os.Stat(l.Dir); !errors.Is(err, os.ErrNotExist) && os.Getenv("PROXYD_LAB_KEEP") != "1" {
		t.Errorf("lab dir %s left after Close (%v)", l.Dir, err)
	}
	if _, err := os.Stat(recordPath(l.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab record left after Close (%v)", err)
	}
	if after := rootNetState(t); after != before {
		t.Errorf("root netns changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestSecondLabInTheSameProcess(t *testing.T) {
	needLab(t)
	l := startLab(t, Config{Pods: 1})
	res, err := l.Traffic(context.Background(), l.ClientNS, "udp", net.JoinHostPort(l.Pods[0].IP, "8080"), 10, 1)
	if err != nil || res.Counts["pod1"] != 10 {
		t.Errorf("traffic: %+v, %v", res, err)
	}
}

func TestSweepCleansUpAfterADeadOwner(t *testing.T) {
	testenv.NeedRoot(t)
	// A dead owner: a process that has exited and been reaped.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	id := "deadbeef"
	rec := ownerRecord{ID: id, OwnerPID: dead.Process.Pid, OwnerStart: 1, Dir: filepath.Join(t.TempDir(), "pxd-lab-"+id+"-x")}
	ns := "pxd-" + id + "-node"
	orphan := "pxd-" + id + "-pod7" // a namespace the record forgot
	for _, n := range []string{ns, orphan} {
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v: %s", err, out)
		}
		t.Cleanup(func() { _ = deleteNetns(n) })
	}
	// A leftover daemon of the dead lab, inside its namespace.
	daemon := exec.Command("ip", "netns", "exec", ns, "sleep", "600")
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = daemon.Wait(); close(done) }()
	t.Cleanup(func() { _ = daemon.Process.Kill(); <-done })
	start, err := procStart(daemon.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	rec.Netns = []string{ns}
	rec.PIDs = []procID{{daemon.Process.Pid, start}}
	fake := &Lab{ID: id, rec: rec, NodeNS: ns, ClientNS: "pxd-" + id + "-client"}
	if err := fake.saveRecord(); err != nil {
		t.Fatal(err)
	}
	// A live lab's namespace (this process owns it) must survive the sweep.
	liveID := "0badc0de"
	self, _ := procStart(os.Getpid())
	live := &Lab{ID: liveID, NodeNS: "pxd-" + liveID + "-node", ClientNS: "pxd-" + liveID + "-client",
		rec: ownerRecord{ID: liveID, OwnerPID: os.Getpid(), OwnerStart: self}}
	if err := live.saveRecord(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(recordPath(liveID)) })
	if out, err := exec.Command("ip", "netns", "add", live.NodeNS).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = deleteNetns(live.NodeNS) })

	Sweep()

	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("the dead lab's daemon survived the sweep")
	}
	for _, n := range []string{ns, orphan} {
		if _, err := os.Stat(filepath.Join(netnsDir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netns %s survived the sweep", n)
		}
	}
	if _, err := os.Stat(recordPath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Error("the dead lab's record survived the sweep")
	}
	if _, err := os.Stat(filepath.Join(netnsDir, live.NodeNS)); err != nil {
		t.Errorf("the live lab's netns was swept: %v", err)
	}
}

func TestProcStatReadsThisProcess(t *testing.T) {
	start, state, err := procStat(os.Getpid())
	if err != nil || start == 0 || state == "" {
		t.Fatalf("procStat(self) = %d, %q, %v", start, state, err)
	}
	if !alive(procID{os.Getpid(), start}) {
		t.Error("this process is not alive by its own record")
	}
	if alive(procID{os.Getpid(), start + 1}) {
		t.Error("a record with another start time matched this process")
	}
}

func TestLabNetnsNamesOnlyMatchLabs(t *testing.T) {
	for name, want := range map[string]bool{
		"pxd-0123abcd-node":                      true,
		"pxd-0123abcd-client":                    true,
		"pxd-0123abcd-pod12":                     true,
		"pxd-0123abcd-node3":                     true,
		"pxd-0123abcd-wire":                      true,
		"pxd-0123abcd-wire2":                     false,
		"pxd-probe":                              false,
		"pxd-0123abcd-other":                     false,
		"pxd-0123ABCD-node":                      false,
		"pxd-" + strconv.Itoa(1234567) + "-node": false,
	} {
		if got := labNetns.MatchString(name); got != want {
			t.Errorf("%s: match = %v, want %v", name, got, want)
		}
	}
}

func TestStartTearsDownWhenTheAPIServerDies(t *testing.T) {
	needLab(t)
	// A bin dir with the real etcd and a kube-apiserver that fails at once.
	bin := t.TempDir()
	if err := os.Symlink(filepath.Join(os.Getenv("PROXYD_LAB_BIN"), "etcd"), filepath.Join(bin, "etcd")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "kube-apiserver"), []byte("#!/bin/sh\necho fake apiserver: boom\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The lab's id, from its first log line: other labs on the machine
	// may add and remove namespaces meanwhile, so only this lab's count.
	var id string
	logf := func(format string, args ...any) {
		if line := fmt.Sprintf(format, args...); id == "" && strings.HasPrefix(line, "lab ") {
			id, _, _ = strings.Cut(strings.TrimPrefix(line, "lab "), ":")
		}
		t.Logf(format, args...)
	}
	l, err := Start(context.Background(), Config{Pods: 1, BinDir: bin, Logf: logf})
	if err == nil {
		l.Close()
		t.Fatal("Start succeeded with a failing kube-apiserver")
	}
	if !strings.Contains(err.Error(), "fake apiserver: boom") {
		t.Errorf("error does not carry the apiserver's log tail: %v", err)
	}
	if id == "" {
		t.Fatal("the lab logged no id")
	}
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pxd-"+id+"-") {
			t.Errorf("namespace %s is left after the failed Start", e.Name())
		}
	}
}
