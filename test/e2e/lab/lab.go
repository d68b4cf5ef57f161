// Package lab builds a throwaway Kubernetes node network for proxyd's
// end-to-end tests: a real etcd and kube-apiserver, a node network namespace
// with a bridge, Pods as network namespaces running echo servers, and a client
// namespace on the same bridge.
//
// Everything lives in network namespaces the lab creates (named
// pxd-<id>-node, pxd-<id>-client, pxd-<id>-podN); the root network namespace
// is never changed. Start records the lab's owner PID, namespaces and daemon
// PIDs under /run/pxd-lab so that Sweep can clean up after a crashed run, and
// Close kills exactly the processes the lab started and deletes its
// namespaces and temp dir.
//
// Starting a lab needs root and the upstream binaries (etcd, kube-apiserver,
// kubectl) in Config.BinDir or $PROXYD_LAB_BIN. The package itself compiles
// and its pure helpers run without either.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Fixed addresses of the lab's topology.
const (
	// BridgeIP and BridgeIPv6 are the node's addresses on br0, the Pods' gateway.
	BridgeIP   = "10.244.1.1"
	BridgeIPv6 = "fd00:10:244:1::1"
	// ClientIP and ClientIPv6 are the client namespace's addresses on br0.
	ClientIP   = "10.244.1.100"
	ClientIPv6 = "fd00:10:244:1::100"
	// NodeIPv4 and NodeIPv6 are the node's InternalIP addresses.
	NodeIPv4 = "10.88.0.2"
	NodeIPv6 = "fd00:88::2"
	// PodCIDR and PodCIDRv6 are the node's Pod ranges (Node.spec.podCIDRs).
	PodCIDR   = "10.244.1.0/24"
	PodCIDRv6 = "fd00:10:244:1::/64"
	// ClusterCIDRs is the cluster-wide Pod range, as kube-proxy's --cluster-cidr.
	ClusterCIDRs = "10.244.0.0/16,fd00:10:244::/56"
	// ServiceCIDRs is the apiserver's --service-cluster-ip-range.
	ServiceCIDRs = "10.96.0.0/16,fd00:10:96::/112"
	// EchoPort is the TCP and UDP port every Pod's echo server listens on.
	EchoPort = 8080
)

// Config says what lab to build. The zero value is a valid default.
type Config struct {
	// Pods is the number of echo Pods, named pod1..podN; default 3, at most 80.
	Pods int
	// BinDir holds etcd, kube-apiserver and kubectl; default $PROXYD_LAB_BIN.
	BinDir string
	// EchoBin is the path of a built test/e2e/echo binary; if empty the lab
	// builds one into its Dir with `go build`.
	EchoBin string
	// Logf receives progress lines; default log.Printf.
	Logf func(format string, args ...any)
}

// Pod is one echo Pod: a network namespace with a veth into the node's br0.
type Pod struct {
	Name string // pod1, pod2, ...
	NS   string // its network namespace
	IP   string // 10.244.1.(10+i)
	IPv6 string // fd00:10:244:1::(10+i)
}

// Lab is a running lab. Its fields are read-only for callers.
type Lab struct {
	// ID is a short random id used in the namespace names.
	ID string
	// NodeNS is the node network namespace, where proxyd, etcd and
	// kube-apiserver run; ClientNS is the client namespace on br0.
	NodeNS, ClientNS string
	// NodeIP is the node's InternalIP (10.88.0.2); NodeIPv6 its IPv6 one.
	NodeIP, NodeIPv6 string
	// NodeName is the Node object the lab created ("node1").
	NodeName string
	// Pods are the echo Pods.
	Pods []Pod
	// Dir holds certs, kubeconfigs and logs; removed by Close unless
	// PROXYD_LAB_KEEP=1.
	Dir string
	// AdminKubeconfig authenticates as system:masters.
	AdminKubeconfig string
	// ProxyKubeconfig authenticates as system:kube-proxy.
	ProxyKubeconfig string
	// APIServerURL is https://127.0.0.1:6443, reachable only inside NodeNS
	// (the apiserver also listens on NodeIP:6443 there, the endpoint of the
	// "kubernetes" Service).
	APIServerURL string
	// BinDir and EchoBin are the binaries in use.
	BinDir, EchoBin string
	// StartDuration is how long Start took; ReadyzDuration how long the
	// apiserver took from exec to /readyz 200.
	StartDuration, ReadyzDuration time.Duration

	logf      func(format string, args ...any)
	pki       *pki
	mu        sync.Mutex
	procs     []*Process
	apiserver *Process // the running kube-apiserver
	// extraNS are namespaces added with AddNamespace.
	extraNS []string
	rec     ownerRecord
	closed  bool
}

// Start builds a lab: namespaces and links, echo Pods, etcd, kube-apiserver,
// kubeconfigs and the Node object. It first sweeps leftovers of crashed runs.
// On error it tears down whatever it made.
func Start(ctx context.Context, cfg Config) (l *Lab, err error) {
	begin := time.Now()
	if cfg.Pods <= 0 {
		cfg.Pods = 3
	}
	if cfg.BinDir == "" {
		cfg.BinDir = os.Getenv("PROXYD_LAB_BIN")
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.Pods > 80 {
		return nil, fmt.Errorf("lab: %d pods: at most 80 fit below the client's 10.244.1.100", cfg.Pods)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: Start needs root")
	}
	if cfg.BinDir == "" {
		return nil, errors.New("lab: no upstream binaries: set Config.BinDir or PROXYD_LAB_BIN")
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("lab: upstream binary: %w", err)
		}
	}
	sweep(cfg.Logf)

	id, err := newID()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pxd-lab-"+id+"-")
	if err != nil {
		return nil, fmt.Errorf("lab: temp dir: %w", err)
	}
	l = &Lab{
		ID:           id,
		NodeNS:       "pxd-" + id + "-node",
		ClientNS:     "pxd-" + id + "-client",
		NodeIP:       NodeIPv4,
		NodeIPv6:     NodeIPv6,
		NodeName:     "node1",
		Dir:          dir,
		APIServerURL: "https://127.0.0.1:6443",
		BinDir:       cfg.BinDir,
		EchoBin:      cfg.EchoBin,
		logf:         cfg.Logf,
	}
	for i := 1; i <= cfg.Pods; i++ {
		l.Pods = append(l.Pods, Pod{
			Name: fmt.Sprintf("pod%d", i),
			NS:   fmt.Sprintf("pxd-%s-pod%d", id, i),
			IP:   fmt.Sprintf("10.244.1.%d", 10+i),
			IPv6: fmt.Sprintf("fd00:10:244:1::%d", 10+i),
		})
	}
	l.rec = ownerRecord{ID: id, Dir: dir, OwnerPID: os.Getpid(), KeepDir: os.Getenv("PROXYD_LAB_KEEP") == "1"}
	if l.rec.OwnerStart, err = procStart(os.Getpid()); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("lab: own start time: %w", err)
	}
	// The record goes down before any namespace exists, so a namespace
	// without a record is always an orphan (see sweep).
	if err := l.saveRecord(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	defer func() {
		if err != nil {
			l.logf("lab %s: start failed, tearing down: %v", id, err)
			if cerr := l.Close(); cerr != nil {
				l.logf("lab %s: teardown after failed start: %v", id, cerr)
			}
			l = nil
		}
	}()
	l.logf("lab %s: starting in %s (%d pods, binaries from %s)", id, dir, cfg.Pods, cfg.BinDir)

	if err := l.buildEcho(ctx); err != nil {
		return l, err
	}
	if err := l.buildNetwork(ctx); err != nil {
		return l, err
	}
	if err := l.startPods(); err != nil {
		return l, err
	}
	if err := l.writePKI(); err != nil {
		return l, err
	}
	if err := l.startControlPlane(ctx); err != nil {
		return l, err
	}
	if err := l.createNode(ctx); err != nil {
		return l, err
	}
	l.StartDuration = time.Since(begin)
	l.logf("lab %s: ready in %.1fs (apiserver /readyz after %.1fs)", id,
		l.StartDuration.Seconds(), l.ReadyzDuration.Seconds())
	return l, nil
}

// Close stops every process the lab started (first those from StartProcess,
// then the Pods, kube-apiserver and etcd; SIGTERM, then SIGKILL after 5 s),
// deletes the lab's namespaces, its record and, unless PROXYD_LAB_KEEP=1,
// its Dir.
// It is safe to call more than once; later calls return nil.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := append([]*Process(nil), l.procs...)
	l.mu.Unlock()

	var errs []error
	if err := l.stopAll(procs); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range l.namespaces() {
		if err := deleteNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(recordPath(l.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove lab record: %w", err))
	}
	if os.Getenv("PROXYD_LAB_KEEP") == "1" {
		l.logf("lab %s: closed; PROXYD_LAB_KEEP=1, keeping %s", l.ID, l.Dir)
	} else if err := os.RemoveAll(l.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
	} else {
		l.logf("lab %s: closed", l.ID)
	}
	return errors.Join(errs...)
}

// namespaces lists every namespace name the lab uses, created or not.
func (l *Lab) namespaces() []string {
	names := []string{l.ClientNS}
	for _, p := range l.Pods {
		names = append(names, p.NS)
	}
	names = append(names, l.extraNS...)
	return append(names, l.NodeNS)
}

// LogPath returns the path of a log file in the lab's Dir (e.g. "kube-apiserver.log").
func (l *Lab) LogPath(name string) string { return filepath.Join(l.Dir, name) }

// PIDs returns the PIDs of every process the lab has started, including stopped ones.
func (l *Lab) PIDs() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	pids := make([]int, 0, len(l.procs))
	for _, p := range l.procs {
		pids = append(pids, p.Cmd.Process.Pid)
	}
	return pids
}

func newID() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("lab: random id: %w", err)
	}
	return hex.EncodeToString(b), nil
}
