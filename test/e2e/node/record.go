package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// recordDir holds one JSON record per running node so that a later Start
// can clean up after a test binary that died without Close (the lab's own
// sweep only knows the processes it started itself).
const recordDir = "/run/pxd-node"

type procRef struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

type record struct {
	Owner procRef   `json:"owner"`
	Dir   string    `json:"dir"`
	Sock  string    `json:"sock"`
	PIDs  []procRef `json:"pids"`
	// Existed are the host paths (hostPaths) and CRI netns that existed
	// before the node started: a sweep must not remove them.
	Existed []string `json:"existed"`
	// Cgroups are the node's own cgroupRoot directories (removed by a sweep).
	Cgroups []string `json:"cgroups,omitempty"`
}

func (n *Node) recordPath() string {
	return filepath.Join(recordDir, n.Lab.ID+"-"+n.Name+".json")
}

// saveRecord writes the node's record with its daemons' PIDs.
func (n *Node) saveRecord() error {
	if err := os.MkdirAll(recordDir, 0o755); err != nil {
		return err
	}
	self, err := ref(os.Getpid())
	if err != nil {
		return err
	}
	r := record{Owner: self, Dir: n.Dir, Sock: n.Sock, Cgroups: n.cgroups}
	for p := range n.snap.existed {
		r.Existed = append(r.Existed, p)
	}
	for p := range n.snap.netns {
		r.Existed = append(r.Existed, p)
	}
	for _, d := range []*daemon{n.containerd, n.kubelet} {
		if d == nil {
			continue
		}
		if p, err := ref(d.cmd.Process.Pid); err == nil {
			r.PIDs = append(r.PIDs, p)
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(n.recordPath(), b, 0o644)
}

// ref returns pid with its start time (field 22 of /proc/PID/stat), which
// tells a live process from a recycled PID.
func ref(pid int) (procRef, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procRef{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procRef{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return procRef{}, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return procRef{PID: pid, Start: st}, err
}

func (p procRef) alive() bool {
	r, err := ref(p.PID)
	return err == nil && r.Start == p.Start
}

// otherLiveNodes reports whether a node other than self has a live owner.
func otherLiveNodes(self string) bool {
	m, _ := filepath.Glob(filepath.Join(recordDir, "*.json"))
	for _, path := range m {
		if path == self {
			continue
		}
		var r record
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &r) == nil && r.Owner.alive() {
			return true
		}
	}
	return false
}

// Sweep cleans up after node runs whose test binary died (see sweepNodes).
// Call it before lab.Start, whose own sweep removes dead labs' Dirs.
func Sweep(logf func(string, ...any)) error { return sweepNodes(logf) }

// sweepNodes kills the daemons and shims of nodes whose owner died and
// unmounts what they left under their Dir. It returns what it could not do.
func sweepNodes(logf func(string, ...any)) error {
	m, _ := filepath.Glob(filepath.Join(recordDir, "*.json"))
	var errs []error
	swept := false
	keep := map[string]bool{}
	for _, path := range m {
		var r record
		b, err := os.ReadFile(path)
		if err != nil || json.Unmarshal(b, &r) != nil {
			continue
		}
		if r.Owner.alive() {
			continue
		}
		logf("node: sweeping a node left by dead pid %d (%s)", r.Owner.PID, r.Dir)
		for _, p := range r.Existed {
			keep[p] = true
		}
		var pids []int
		for _, p := range r.PIDs {
			if p.alive() {
				pids = append(pids, p.PID)
			}
		}
		if r.Sock != "" {
			pids = append(pids, shimPIDs(r.Sock)...)
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		killPIDs(pids)
		errs = append(errs, unmountAll(r.Dir)...)
		errs = append(errs, removeCgroups(r.Cgroups)...)
		if strings.Contains(r.Dir, "/pxd-lab-") && len(mountsUnder(r.Dir)) == 0 {
			if err := os.RemoveAll(r.Dir); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		swept = true
	}
	if swept {
		errs = append(errs, sweepShared(logf, keep)...)
	}
	return errors.Join(errs...)
}

// sweepShared cleans what a dead node leaves in shared host places: its
// containers' processes (orphaned when the shims died), kubepods cgroups,
// CRI netns and /run/containerd. Those places are shared with any other
// node, so this runs only when no live node record exists and no kubelet
// or containerd is running on the machine (a real node's would be there).
func sweepShared(logf func(string, ...any), keep map[string]bool) []error {
	if otherLiveNodes("") {
		return nil
	}
	if p := runningNamed("kubelet", "containerd"); p != "" {
		logf("node: sweep: %s is running; leaving kubepods cgroups and CRI netns alone", p)
		return nil
	}
	var pids []int
	for _, top := range []string{"/sys/fs/cgroup/pids/kubepods", "/sys/fs/cgroup/memory/kubepods", "/sys/fs/cgroup/unified/kubepods"} {
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	if len(pids) > 0 {
		logf("node: sweep: killing %d orphaned container processes", len(pids))
		killPIDs(pids)
	}
	// restore skips what existed before the dead node started.
	snap := hostSnapshot{existed: keep, netns: keep}
	return snap.restore()
}

// runningNamed returns "name (pid N)" of a running process called one of names.
func runningNamed(names ...string) string {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil {
			continue
		}
		comm := strings.TrimSpace(string(b))
		for _, n := range names {
			if comm == n {
				return fmt.Sprintf("%s (pid %d)", n, pid)
			}
		}
	}
	return ""
}
