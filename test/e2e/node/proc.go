package node

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// daemon is a process the node started with nsenter --net (not `ip netns
// exec`: that remounts /sys and hides the cgroup mounts runc needs).
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startDaemon runs argv in the network namespace /run/netns/ns (only the
// network namespace changes) in its own session, output to dir/log.
// nsenter without --fork execs argv, so the PID is the daemon's.
func startDaemon(ns, dir, logName string, argv ...string) (*daemon, error) {
	logPath := filepath.Join(dir, logName)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	d := &daemon{name: filepath.Base(argv[0]), cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	return d, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to timeout, then SIGKILLs.
func (d *daemon) stop(timeout time.Duration) {
	if d == nil || d.exited() {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return
	case <-time.After(timeout):
	}
	_ = d.cmd.Process.Kill()
	<-d.done
}

// shimPIDs returns the PIDs of containerd-shim processes started by the
// containerd listening on sock: their command line carries "-address sock".
func shimPIDs(sock string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == sock {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// killPIDs SIGKILLs pids (each a process this node started) and waits up to
// 5 s for them to go.
func killPIDs(pids []int) {
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for time.Now().Before(deadline) {
			if err := syscall.Kill(p, 0); errors.Is(err, syscall.ESRCH) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll lazily unmounts every mount under dir (deepest first).
func unmountAll(dir string) []error {
	var errs []error
	for _, mp := range mountsUnder(dir) {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("umount %s: %w", mp, err))
		}
	}
	return errs
}

// hostSnapshot records which host paths existed before the node started,
// so teardown removes exactly those the node's daemons created.
type hostSnapshot struct {
	existed map[string]bool
	netns   map[string]bool
}

// hostPaths are the places on the host that kubelet and containerd 1.6
// write to whatever their configuration says.
func hostPaths() []string {
	paths := []string{"/var/log/containers", "/var/log/pods", "/run/containerd",
		"/usr/libexec/kubernetes", "/var/lib/kubelet", "/var/lib/cni", "/etc/cni"}
	ctrls, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, c := range ctrls {
		paths = append(paths, filepath.Join(c, "kubepods"), filepath.Join(c, "kubepods.slice"))
	}
	return paths
}

func snapshotHost() hostSnapshot {
	s := hostSnapshot{existed: map[string]bool{}, netns: map[string]bool{}}
	for _, p := range hostPaths() {
		if _, err := os.Lstat(p); err == nil {
			s.existed[p] = true
		}
	}
	for _, n := range cniNetns() {
		s.netns[n] = true
	}
	return s
}

// cniNetns lists the CRI-created network namespaces (/run/netns/cni-*).
func cniNetns() []string {
	m, _ := filepath.Glob("/run/netns/cni-*")
	return m
}

// restore removes what appeared since the snapshot: CRI netns mounts, cgroup
// directories (empty ones, deepest first) and the other host paths.
func (s hostSnapshot) restore() []error {
	var errs []error
	for _, n := range cniNetns() {
		if s.netns[n] {
			continue
		}
		_ = syscall.Unmount(n, syscall.MNT_DETACH)
		if err := os.Remove(n); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range hostPaths() {
		if s.existed[p] {
			continue
		}
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if strings.HasPrefix(p, "/sys/fs/cgroup/") {
			if err := rmdirTree(p); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// rmdirTree removes a cgroup directory tree bottom-up with rmdir (cgroupfs
// directories cannot be RemoveAll'ed: their files cannot be unlinked).
func rmdirTree(dir string) error {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var last error
	for _, d := range dirs {
		var err error
		for i := 0; i < 20; i++ { // a just-killed task may linger briefly
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			last = fmt.Errorf("rmdir %s: %w", d, err)
		}
	}
	return last
}
