package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// ControllerOptions says how to run kube-controller-manager.
type ControllerOptions struct {
	// ToolsDir holds kube-controller-manager and kube-scheduler (default
	// the lab's BinDir).
	ToolsDir string
	// ClusterCIDR is --cluster-cidr.
	ClusterCIDR string
	// AllocateNodeCIDRs makes node IPAM give each Node a /24 of ClusterCIDR.
	AllocateNodeCIDRs bool
}

// Controllers are kube-controller-manager and kube-scheduler, run in the
// lab's node namespace as lab processes (so the lab's record and sweep
// cover them). With them, EndpointSlices come from selectors and Pod
// readiness, and Pods get scheduled, as in a cluster.
type Controllers struct {
	KCM, Scheduler *lab.Process
}

// StartControllers starts kube-controller-manager and kube-scheduler.
func StartControllers(l *lab.Lab, o ControllerOptions) (*Controllers, error) {
	if o.ToolsDir == "" {
		o.ToolsDir = l.BinDir
	}
	for _, b := range []string{"kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(o.ToolsDir, b)); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	kcmKC, err := l.Kubeconfig("kube-controller-manager", "system:kube-controller-manager", "system:masters")
	if err != nil {
		return nil, err
	}
	schedKC, err := l.Kubeconfig("kube-scheduler", "system:kube-scheduler", "system:masters")
	if err != nil {
		return nil, err
	}
	c := &Controllers{}
	args := []string{filepath.Join(o.ToolsDir, "kube-controller-manager"),
		"--kubeconfig=" + kcmKC,
		"--leader-elect=false",
		"--service-account-private-key-file=" + filepath.Join(l.Dir, "pki", "sa.key"),
		"--root-ca-file=" + l.CAFile(),
		"--use-service-account-credentials=false",
		"--bind-address=127.0.0.1",
		"--cluster-cidr=" + o.ClusterCIDR,
		"--service-cluster-ip-range=" + lab.ServiceCIDRs,
		"--node-monitor-grace-period=20s",
		"--concurrent-service-endpoint-syncs=5",
		"--endpointslice-updates-batch-period=0s",
		"--v=1",
	}
	if o.AllocateNodeCIDRs {
		args = append(args, "--allocate-node-cidrs=true", "--node-cidr-mask-size=24", "--configure-cloud-routes=false")
	} else {
		args = append(args, "--allocate-node-cidrs=false")
	}
	if c.KCM, err = l.StartProcess(l.NodeNS, "kube-controller-manager.log", args...); err != nil {
		return nil, err
	}
	if c.Scheduler, err = l.StartProcess(l.NodeNS, "kube-scheduler.log", filepath.Join(o.ToolsDir, "kube-scheduler"),
		"--kubeconfig="+schedKC,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--v=1",
	); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close stops both (the lab's Close would too).
func (c *Controllers) Close() {
	if c == nil {
		return
	}
	for _, p := range []*lab.Process{c.Scheduler, c.KCM} {
		if p != nil {
			_ = p.Stop(syscall.SIGTERM, 5*time.Second)
		}
	}
}

// makeCgroupRoot creates spec.CgroupRoot in every cgroup hierarchy (cpuset
// needs cpus and mems copied from its parent before tasks can join).
func (n *Node) makeCgroupRoot() error {
	root := strings.Trim(n.spec.CgroupRoot, "/")
	if root == "" {
		return nil
	}
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hier {
		if fi, err := os.Lstat(h); err != nil || !fi.IsDir() {
			continue // cpu -> cpu,cpuacct and the like
		}
		d := filepath.Join(h, root)
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("cgroup root %s: %w", d, err)
		}
		n.cgroups = append(n.cgroups, d)
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("%s/%s: %w", d, f, err)
				}
			}
		}
	}
	return n.saveRecord()
}

// removeCgroups kills what is left in the cgroup trees and removes them.
func removeCgroups(dirs []string) []error {
	var pids []int
	for _, d := range dirs {
		pids = append(pids, cgroupPIDs(d)...)
	}
	killPIDs(pids)
	var errs []error
	for _, d := range dirs {
		if err := rmdirTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// cgroupPIDs lists the processes in the cgroup tree at dir.
func cgroupPIDs(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}
