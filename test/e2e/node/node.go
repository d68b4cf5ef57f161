// Package node turns a test/e2e/lab into a real Kubernetes node: containerd
// (Debian's 1.6 with runc and the reference CNI plugins), kubelet,
// kube-controller-manager and kube-scheduler run in the lab's node network
// namespace, so Deployments, probes, EndpointSlices and DaemonSets behave
// as in a cluster. The e2enode tests deploy proxyd with deploy/daemonset.yaml.
//
// Everything the daemons keep (containerd root and state, runc state, CNI
// IPAM, kubelet root, Pod logs) lives under the lab's Dir; Close stops the
// daemons and the containerd shims they started (by PID), unmounts what is
// left under Dir, and removes what kubelet and containerd create on the host
// whatever they are told (CRI netns under /run/netns/cni-*, kubepods
// cgroups, /var/log/containers, /run/containerd) unless it existed before.
package node

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Image references written by hack/image.
const (
	ProxydImage = "proxyd:dev"
	PauseImage  = "proxyd.local/pause:dev"
	EchoImage   = "proxyd.local/echo:dev"
)

// CNI ranges of the kubelet's Pods (the lab's hand-made Pods use 10.244.1.0/24).
const (
	CNIBridge  = "cni0"
	CNISubnet  = "10.244.2.0/24"
	CNIGateway = "10.244.2.1"
)

// Packages are the Debian packages the node needs.
var Packages = []string{"containerd", "runc", "containernetworking-plugins"}

// Config says how to build the one-node lab (Start).
type Config struct {
	// ToolsDir holds kubelet, kube-controller-manager, kube-scheduler
	// (default: the lab's BinDir).
	ToolsDir string
	// ImagesDir holds proxyd.tar, pause.tar, echo.tar; if empty Start runs
	// `go run ./hack/image` into Dir/images (ProxydBin as -proxyd if set).
	ImagesDir string
	// ProxydBin is a prebuilt static proxyd for the image.
	ProxydBin string
	// RepoRoot is the proxyd checkout (for go run ./hack/image).
	RepoRoot string
	Logf     func(format string, args ...any)
}

// Spec says where and as what one kubelet node runs.
type Spec struct {
	// Name is the Node's name; NS the network namespace its containerd,
	// kubelet and hostNetwork Pods live in; Dir holds everything they keep.
	Name, NS, Dir string
	// NodeIPs are the kubelet's --node-ip addresses (the Node's InternalIPs).
	NodeIPs []string
	// APIServer is the URL the kubelet reaches the apiserver at (default
	// the lab's APIServerURL, which only works in the lab's node namespace).
	APIServer string
	// CgroupRoot is the kubelet's cgroupRoot (default "/"). Two kubelets on
	// one host must not share one: each deletes the Pod cgroups it does not
	// know. A non-default root is created in every hierarchy and removed by
	// Close.
	CgroupRoot string
	// PodCIDR is the CNI subnet. Empty: wait for kube-controller-manager to
	// allocate Node.spec.podCIDR and write the CNI config then.
	PodCIDR string
	// ClusterDNS is the kubelet's clusterDNS address (none if empty).
	ClusterDNS string
	// Labels are the kubelet's --node-labels (e.g. topology.kubernetes.io/zone).
	Labels map[string]string
	// Images are image tarballs imported into containerd before the
	// kubelet starts.
	Images []string
	// SandboxImage is containerd's sandbox_image (default PauseImage).
	SandboxImage string
	// ToolsDir holds kubelet (default the lab's BinDir).
	ToolsDir string
	Logf     func(format string, args ...any)
}

// Node is a running kubelet node.
type Node struct {
	Lab    *lab.Lab
	Name   string
	NS     string
	Dir    string
	Sock   string // containerd's socket
	Client kubernetes.Interface
	// PodCIDR is the node's CNI subnet (given or allocated).
	PodCIDR string
	Timings map[string]time.Duration
	spec    Spec
	// ctl are the controllers Start started for the one-node lab.
	ctl        *Controllers
	containerd *daemon
	kubelet    *daemon
	cgroups    []string // the cgroupRoot directories created, one per hierarchy
	snap       hostSnapshot
	logf       func(string, ...any)
}

// Start brings the one-node lab up: kube-controller-manager and
// kube-scheduler, then a kubelet node in the lab's node namespace with the
// fixed CNISubnet, and waits until the Node is Ready. The lab's hand-made
// Node object (same name) is deleted first so the kubelet registers its own.
func Start(ctx context.Context, l *lab.Lab, cfg Config) (*Node, error) {
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.ToolsDir == "" {
		cfg.ToolsDir = l.BinDir
	}
	begin := time.Now()
	timings := map[string]time.Duration{}
	dir := filepath.Join(l.Dir, "node")
	images := cfg.ImagesDir
	if images == "" {
		images = filepath.Join(dir, "images")
		if err := BuildImages(ctx, cfg.RepoRoot, images, cfg.ProxydBin); err != nil {
			return nil, err
		}
		timings["images"] = time.Since(begin)
	}
	cs, err := l.Clientset()
	if err != nil {
		return nil, err
	}
	if err := cs.CoreV1().Nodes().Delete(ctx, l.NodeName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("delete the lab's Node %s: %w", l.NodeName, err)
	}
	ctl, err := StartControllers(l, ControllerOptions{ToolsDir: cfg.ToolsDir, ClusterCIDR: lab.ClusterCIDRs})
	if err != nil {
		return nil, err
	}
	var tars []string
	for _, img := range []string{"pause.tar", "echo.tar", "proxyd.tar"} {
		tars = append(tars, filepath.Join(images, img))
	}
	n, err := StartKubelet(ctx, l, Spec{
		Name: l.NodeName, NS: l.NodeNS, Dir: dir, NodeIPs: []string{l.NodeIP, l.NodeIPv6},
		PodCIDR: CNISubnet, Images: tars, ToolsDir: cfg.ToolsDir, Logf: cfg.Logf,
	})
	if err != nil {
		ctl.Close()
		return nil, err
	}
	n.ctl = ctl
	for k, v := range timings {
		n.Timings[k] = v
	}
	n.Timings["total"] = time.Since(begin)
	return n, nil
}

// StartKubelet starts containerd and a kubelet as spec says, registers the
// Node and waits until it is Ready (with an allocated Pod CIDR when
// spec.PodCIDR is empty). On error it tears down what it started.
func StartKubelet(ctx context.Context, l *lab.Lab, spec Spec) (n *Node, err error) {
	if spec.Logf == nil {
		spec.Logf = log.Printf
	}
	if spec.ToolsDir == "" {
		spec.ToolsDir = l.BinDir
	}
	if spec.APIServer == "" {
		spec.APIServer = l.APIServerURL
	}
	if spec.SandboxImage == "" {
		spec.SandboxImage = PauseImage
	}
	n = &Node{Lab: l, Name: spec.Name, NS: spec.NS, Dir: spec.Dir, PodCIDR: spec.PodCIDR, spec: spec,
		logf: spec.Logf, Timings: map[string]time.Duration{}}
	n.Sock = filepath.Join(n.Dir, "containerd", "containerd.sock")
	begin := time.Now()
	if err := EnsurePackages(spec.Logf); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(spec.ToolsDir, "kubelet")); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return nil, err
	}
	if n.Client, err = l.Clientset(); err != nil {
		return nil, err
	}
	if err := sweepNodes(n.logf); err != nil {
		n.logf("node: sweep: %v", err)
	}
	n.snap = snapshotHost()
	defer func() {
		if err != nil {
			n.logf("node %s: start failed (%v); tearing down", n.Name, err)
			n.Close()
			n = nil
		}
	}()
	if err := n.saveRecord(); err != nil {
		return n, err
	}
	if err := n.makeCgroupRoot(); err != nil {
		return n, err
	}
	t0 := time.Now()
	if err := n.startContainerd(ctx); err != nil {
		return n, err
	}
	if err := n.saveRecord(); err != nil {
		return n, err
	}
	for _, img := range spec.Images {
		if out, err := n.ctr(ctx, "images", "import", img); err != nil {
			return n, fmt.Errorf("ctr import %s: %w\n%s", img, err, out)
		}
	}
	n.Timings["containerd+import"] = time.Since(t0)
	t1 := time.Now()
	if err := n.startKubelet(); err != nil {
		return n, err
	}
	if err := n.saveRecord(); err != nil {
		return n, err
	}
	if n.PodCIDR == "" {
		if n.PodCIDR, err = n.waitPodCIDR(ctx, 60*time.Second); err != nil {
			return n, err
		}
		if err := n.writeCNIConfig(); err != nil {
			return n, err
		}
	}
	if err := n.WaitReady(ctx, 90*time.Second); err != nil {
		return n, err
	}
	n.Timings["kubelet→Ready"] = time.Since(t1)
	n.Timings["total"] = time.Since(begin)
	n.logf("node %s: Ready (pod CIDR %s); timings %v", n.Name, n.PodCIDR, n.Timings)
	return n, nil
}

// waitPodCIDR waits until the Node has spec.podCIDR (from
// kube-controller-manager's node IPAM) and returns it.
func (n *Node) waitPodCIDR(ctx context.Context, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if n.kubelet.exited() {
			return "", fmt.Errorf("kubelet exited: %v\n%s", n.kubelet.err, tail(n.kubelet.log, 30))
		}
		no, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil && no.Spec.PodCIDR != "" {
			return no.Spec.PodCIDR, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "", fmt.Errorf("node %s: no pod CIDR allocated after %s (is kube-controller-manager allocating?)", n.Name, timeout)
}

// EnsurePackages installs the Debian packages that are missing, with a
// temporary /usr/sbin/policy-rc.d that forbids starting daemons (an existing
// one is left alone).
func EnsurePackages(logf func(string, ...any)) error {
	var missing []string
	for _, p := range Packages {
		if exec.Command("dpkg-query", "-W", "-f=${Status}", p).Run() != nil {
			missing = append(missing, p)
			continue
		}
		out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", p).Output()
		if !strings.Contains(string(out), "install ok installed") {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return err
		}
		defer os.Remove(policy)
	}
	logf("node: apt-get install %s", strings.Join(missing, " "))
	cmd := exec.Command("apt-get", append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		upd := exec.Command("apt-get", "update", "-q")
		_ = upd.Run()
		cmd = exec.Command("apt-get", append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out2, err2 := cmd.CombinedOutput(); err2 != nil {
			return fmt.Errorf("apt-get install %v: %w\n%s\n%s", missing, err, out, out2)
		}
	}
	return nil
}

// BuildImages runs `go run ./hack/image -out dir` in repo.
func BuildImages(ctx context.Context, repo, dir, proxydBin string) error {
	args := []string{"run", "./hack/image", "-out", dir}
	if proxydBin != "" {
		args = append(args, "-proxyd", proxydBin)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go run ./hack/image: %w\n%s", err, out)
	}
	return nil
}

// ctr runs ctr against this node's containerd in namespace k8s.io.
func (n *Node) ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.Sock, "-n", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// WaitReady waits for the Node's Ready condition.
func (n *Node) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "not registered"
	for time.Now().Before(deadline) {
		if n.kubelet.exited() {
			return fmt.Errorf("kubelet exited: %v\n%s", n.kubelet.err, tail(n.kubelet.log, 30))
		}
		no, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil {
			for _, c := range no.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					last = c.Reason + ": " + c.Message
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("node %s not Ready after %s (%s); kubelet log:\n%s", n.Name, timeout, last, tail(n.kubelet.log, 40))
}

// Close stops kubelet (after asking it to remove every Pod), the
// controllers Start started, containerd and its shims, unmounts what is
// under Dir, removes the cgroupRoot and restores the host paths. It returns
// what it could not clean.
func (n *Node) Close() error {
	if n == nil {
		return nil
	}
	var errs []error
	if n.kubelet != nil && !n.kubelet.exited() && n.Client != nil {
		n.drain()
	}
	n.kubelet.stop(10 * time.Second)
	n.ctl.Close()
	if n.containerd != nil && !n.containerd.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		n.removeSandboxes(ctx)
		cancel()
	}
	shims := shimPIDs(n.Sock)
	n.containerd.stop(10 * time.Second)
	killPIDs(append(shims, shimPIDs(n.Sock)...))
	errs = append(errs, unmountAll(n.Dir)...)
	errs = append(errs, removeCgroups(n.cgroups)...)
	// Host paths are shared by concurrent nodes: only the last one out
	// removes them.
	if n.snap.existed != nil && !otherLiveNodes(n.recordPath()) {
		errs = append(errs, n.snap.restore()...)
	}
	if err := os.Remove(n.recordPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if left := mountsUnder(n.Dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("mounts left under %s: %v", n.Dir, left))
	}
	return errors.Join(errs...)
}

// drain deletes every DaemonSet, Deployment, ReplicaSet and Pod (of every
// node: Close tears the whole lab down) and waits (≤30 s) until this
// node's kubelet has torn its sandboxes down.
func (n *Node) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := n.Client
	// Controllers would recreate Pods: remove the DaemonSets and workloads first.
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	zero := int64(0)
	for _, ns := range nss.Items {
		_ = cs.AppsV1().DaemonSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = cs.AppsV1().Deployments(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = cs.AppsV1().ReplicaSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	}
	for ctx.Err() == nil {
		out, err := n.ctr(ctx, "tasks", "ls", "-q")
		if err == nil && strings.TrimSpace(out) == "" {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// removeSandboxes kills and deletes whatever tasks and containers are left
// in containerd's k8s.io namespace (after a kubelet that did not finish).
func (n *Node) removeSandboxes(ctx context.Context) {
	out, err := n.ctr(ctx, "containers", "ls", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		_, _ = n.ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
	}
	time.Sleep(300 * time.Millisecond)
	for _, id := range strings.Fields(out) {
		_, _ = n.ctr(ctx, "tasks", "rm", "-f", id)
		_, _ = n.ctr(ctx, "containers", "rm", id)
	}
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	s := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(s) > lines {
		s = s[len(s)-lines:]
	}
	return strings.Join(s, "\n")
}
