// Package cluster builds a multi-node Kubernetes cluster on one host for
// proxyd's end-to-end tests and the upstream e2e suite: the control plane
// of a test/e2e/lab (etcd, kube-apiserver, kube-controller-manager with node
// IPAM, kube-scheduler) in the lab's node namespace, and N kubelet nodes
// (test/e2e/node), each in a network namespace of its own with its own
// containerd, cgroupRoot and Pod CIDR, Pods on a per-node bridge. The
// namespaces are joined by an underlay bridge in a namespace of its own
// (pxd-<id>-wire, 10.88.0.0/24) and every namespace routes each node's Pod
// CIDR to that node's underlay address: no overlay. CoreDNS serves
// cluster.local as kube-dns on 10.96.0.10, the kubelets' clusterDNS.
//
// Every namespace, process, cgroup and directory is the lab's and the
// nodes' (recorded, swept after a crash, removed by Close); nothing in the
// root network namespace changes.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"path/filepath"
	"sync"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
	"github.com/proxyd/proxyd/test/e2e/node"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Addresses of the cluster.
const (
	// ControlPlaneIP is the apiserver's address on the underlay.
	ControlPlaneIP = lab.NodeIPv4
	// PodCIDRs is what kube-controller-manager cuts one /24 a node from. It
	// lies inside the 10.244.0.0/16 that the proxies' --cluster-cidr says
	// and apart from the lab's own hand-made Pods (10.244.1.0/24, 10.244.2.0/24).
	PodCIDRs = "10.244.128.0/17"
	// DNSIP is the kube-dns Service's ClusterIP.
	DNSIP = "10.96.0.10"
	// WireBridge is the underlay bridge in the wire namespace.
	WireBridge = "wire0"
)

// NodeIP is the underlay (InternalIP) address of node i (1-based).
func NodeIP(i int) string { return fmt.Sprintf("10.88.0.%d", 10+i) }

// Config says what cluster to build.
type Config struct {
	// Nodes is the number of kubelet nodes (default 2, at most 9).
	Nodes int
	// BinDir holds etcd, kube-apiserver, kubectl, kubelet,
	// kube-controller-manager and kube-scheduler (default $PROXYD_LAB_BIN).
	BinDir string
	// Images are image tarballs imported into every node's containerd;
	// one of them must hold PauseImage.
	Images []string
	// EchoBin is the lab's echo binary (see lab.Config).
	EchoBin string
	Logf    func(format string, args ...any)
}

// PauseImage is the sandbox image every node's containerd uses: the name
// the upstream suite knows, built from source by hack/image.
const PauseImage = "registry.k8s.io/pause:3.10.2"

// Cluster is a running cluster.
type Cluster struct {
	Lab    *lab.Lab
	Nodes  []*node.Node
	Client kubernetes.Interface
	// WireNS is the underlay's namespace.
	WireNS string
	// Timings of Start's phases.
	Timings map[string]time.Duration
	ctl     *node.Controllers
	logf    func(string, ...any)
}

// Start builds the cluster and waits until every node is Ready. A Service
// proxy (Deploy) and then cluster DNS (DeployCoreDNS) come next. On error
// it tears down what it made.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if cfg.Nodes <= 0 {
		cfg.Nodes = 2
	}
	if cfg.Nodes > 9 {
		return nil, fmt.Errorf("cluster: %d nodes: at most 9", cfg.Nodes)
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	begin := time.Now()
	if err := node.Sweep(cfg.Logf); err != nil {
		cfg.Logf("cluster: node sweep: %v", err)
	}
	if err := node.EnsurePackages(cfg.Logf); err != nil {
		return nil, err
	}
	l, err := lab.Start(ctx, lab.Config{BinDir: cfg.BinDir, Pods: 1, EchoBin: cfg.EchoBin, Logf: cfg.Logf})
	if err != nil {
		return nil, err
	}
	c = &Cluster{Lab: l, logf: cfg.Logf, Timings: map[string]time.Duration{"control plane": time.Since(begin)}}
	defer func() {
		if err != nil {
			c.logf("cluster: start failed (%v); tearing down", err)
			if cerr := c.Close(); cerr != nil {
				c.logf("cluster: teardown: %v", cerr)
			}
			c = nil
		}
	}()
	if c.Client, err = l.Clientset(); err != nil {
		return c, err
	}
	// The lab's hand-made Node is not a kubelet's: it would count as a
	// schedulable node that runs nothing.
	if err := c.Client.CoreV1().Nodes().Delete(ctx, l.NodeName, metav1.DeleteOptions{}); err != nil {
		return c, fmt.Errorf("delete the lab's Node: %w", err)
	}
	if err := c.buildUnderlay(cfg.Nodes); err != nil {
		return c, err
	}
	if c.ctl, err = node.StartControllers(l, node.ControllerOptions{ClusterCIDR: PodCIDRs, AllocateNodeCIDRs: true}); err != nil {
		return c, err
	}
	t0 := time.Now()
	if err := c.startNodes(ctx, cfg); err != nil {
		return c, err
	}
	c.Timings["nodes Ready"] = time.Since(t0)
	if err := c.routePodCIDRs(); err != nil {
		return c, err
	}
	c.Timings["total"] = time.Since(begin)
	c.logf("cluster %s: %d nodes Ready in %.1fs (%v)", l.ID, len(c.Nodes), time.Since(begin).Seconds(), c.Timings)
	return c, nil
}

// startNodes starts every kubelet node at once and waits for all.
func (c *Cluster) startNodes(ctx context.Context, cfg Config) error {
	l := c.Lab
	nodes := make([]*node.Node, cfg.Nodes)
	errs := make([]error, cfg.Nodes)
	var wg sync.WaitGroup
	for i := 1; i <= cfg.Nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		spec := node.Spec{
			Name:       name,
			NS:         c.nodeNS(i),
			Dir:        filepath.Join(l.Dir, name),
			NodeIPs:    []string{NodeIP(i)},
			APIServer:  "https://" + ControlPlaneIP + ":6443",
			CgroupRoot: "/pxd-" + l.ID + "-" + name,
			ClusterDNS: DNSIP,
			// Three zones, nodes dealt round-robin: the topology tests need
			// three zones, some with two nodes each.
			Labels:       map[string]string{"topology.kubernetes.io/zone": fmt.Sprintf("zone-%c", 'a'+(i-1)%3)},
			Images:       cfg.Images,
			SandboxImage: PauseImage,
			Logf:         cfg.Logf,
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i-1], errs[i-1] = node.StartKubelet(ctx, l, spec)
		}()
	}
	wg.Wait()
	for _, n := range nodes {
		if n != nil {
			c.Nodes = append(c.Nodes, n)
		}
	}
	return errors.Join(errs...)
}

// nodeNS is the network namespace of node i.
func (c *Cluster) nodeNS(i int) string { return fmt.Sprintf("pxd-%s-node%d", c.Lab.ID, i) }

// Close stops the nodes one after another (the last one restores the host
// paths kubelet and containerd share), then the control plane, and removes
// the namespaces.
func (c *Cluster) Close() error {
	if c == nil {
		return nil
	}
	var errs []error
	for _, n := range c.Nodes {
		if err := n.Close(); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
	}
	c.ctl.Close()
	if err := c.Lab.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
