package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// contender is one Service proxy in one mode.
type contender struct {
	name    string // proxyd-nftables, kube-proxy-iptables, ...
	proxy   string // proxyd or kube-proxy
	mode    string // nftables or iptables
	bin     string
	proxydV bool // proxyd (has proxyd_* metrics)
	// profiling serves /debug/pprof on proxyd's metrics address.
	profiling bool
}

var allContenders = []string{"proxyd-nftables", "proxyd-iptables", "kube-proxy-nftables", "kube-proxy-iptables"}

func newContender(name, proxydBin, kubeProxyBin string) (contender, error) {
	proxy, mode, ok := strings.Cut(strings.TrimPrefix(name, "kube-"), "-")
	if !ok || (mode != "nftables" && mode != "iptables") {
		return contender{}, fmt.Errorf("contender %q: want proxyd-{nftables,iptables} or kube-proxy-{nftables,iptables}", name)
	}
	switch {
	case proxy == "proxyd":
		return contender{name: name, proxy: "proxyd", mode: mode, bin: proxydBin, proxydV: true}, nil
	case proxy == "proxy" && strings.HasPrefix(name, "kube-"):
		return contender{name: name, proxy: "kube-proxy", mode: mode, bin: kubeProxyBin}, nil
	}
	return contender{}, fmt.Errorf("contender %q: unknown proxy", name)
}

// argv is the command line with the given sync period.
func (c contender) argv(l *lab.Lab, syncPeriod time.Duration) []string {
	common := []string{"--kubeconfig=" + l.ProxyKubeconfig, "--hostname-override=" + l.NodeName,
		"--cluster-cidr=" + lab.ClusterCIDRs, "--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256"}
	if c.proxy == "proxyd" {
		argv := append(append([]string{c.bin, "--mode=" + c.mode}, common...),
			"--sync-period="+syncPeriod.String(), "--min-sync-period=0")
		if c.profiling {
			argv = append(argv, "--profiling")
		}
		return argv
	}
	// kube-proxy applies the --iptables-* periods to nftables mode too.
	return append(append([]string{c.bin, "--proxy-mode=" + c.mode}, common...),
		"--iptables-sync-period="+syncPeriod.String(), "--iptables-min-sync-period=0",
		"--conntrack-max-per-core=0")
}

func (c contender) cleanupArgv(l *lab.Lab) []string {
	if c.proxy == "proxyd" {
		return []string{c.bin, "--cleanup", "--kubeconfig=" + l.ProxyKubeconfig}
	}
	return []string{c.bin, "--cleanup", "--kubeconfig=" + l.ProxyKubeconfig, "--conntrack-max-per-core=0"}
}

func (c contender) view(l *lab.Lab) (kernelView, error) {
	switch {
	case c.proxy == "proxyd" && c.mode == "nftables":
		return newNFTView(l.NodeNS, "proxyd", "svc-")
	case c.mode == "nftables":
		return newNFTView(l.NodeNS, "kube-proxy", "service-")
	case c.proxy == "proxyd":
		return &iptView{l: l, prefix: "PROXYD-"}, nil
	}
	return &iptView{l: l, prefix: "KUBE-"}, nil
}

// running is a started contender.
type running struct {
	c            contender
	peakChildRSS int64 // largest RSS of its children seen while polling
	p            *lab.Process
	start        time.Time
	l            *lab.Lab
}

func start(l *lab.Lab, c contender, syncPeriod time.Duration, tag string) (*running, error) {
	t := time.Now()
	p, err := l.StartProcess(l.NodeNS, fmt.Sprintf("%s-%s.log", c.name, tag), c.argv(l, syncPeriod)...)
	if err != nil {
		return nil, err
	}
	return &running{c: c, p: p, start: t, l: l}, nil
}

func (r *running) stop() error {
	if err := r.p.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
		return fmt.Errorf("stop %s: %w", r.c.name, err)
	}
	return nil
}

// stopAll stops the contender and then every process it had started that
// outlived it (an nft or iptables-restore in the middle of a full sync), so
// that the cleanup after it does not race a commit still on its way.
func (r *running) stopAll(logf func(string, ...any)) error {
	kids := descendants(r.p.PID(), 3)
	born := map[int]string{}
	for _, pid := range kids {
		born[pid] = startTime(pid)
	}
	err := r.stop()
	// A killed nft finishes the commit it is in first: at 5k × 50 that
	// can take a while.
	deadline := time.Now().Add(2 * time.Minute)
	for _, pid := range kids {
		// The same process still, not a new one under a reused PID.
		if born[pid] == "" || startTime(pid) != born[pid] {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			logf("%s: killed its child %d, still running after it stopped", r.c.name, pid)
		}
		for time.Now().Before(deadline) && startTime(pid) == born[pid] && !zombie(pid) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	return err
}

// descendants lists pid's live descendants, depth levels down.
func descendants(pid, depth int) []int {
	if depth == 0 {
		return nil
	}
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if child, err := strconv.Atoi(f); err == nil {
				out = append(append(out, child), descendants(child, depth-1)...)
			}
		}
	}
	return out
}

// statFields are the fields of /proc/<pid>/stat after the command name
// (which may contain spaces, in parentheses); nil when the process is gone.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// startTime is the process's start time in clock ticks after boot (stat
// field 22), "" when it is gone: with the PID it names one process.
func startTime(pid int) string {
	if f := statFields(pid); len(f) > 19 {
		return f[19]
	}
	return ""
}

// zombie says whether pid has exited and waits to be reaped.
func zombie(pid int) bool {
	f := statFields(pid)
	return len(f) == 0 || f[0] == "Z"
}

// exitReason explains an exited contender with its log's last lines.
func (r *running) exitReason() string {
	b, _ := os.ReadFile(r.p.Log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return fmt.Sprintf("exited (%v): %s", r.p.Err(), strings.Join(lines, " / "))
}

// notAvailable says whether the contender exited because its mode is not
// built in.
func (r *running) notAvailable() bool {
	b, _ := os.ReadFile(r.p.Log)
	return strings.Contains(string(b), "not available")
}

// syncFailures counts "Sync failed" lines in the log (proxyd and
// kube-proxy both log that phrase) and returns the last one, shortened.
func (r *running) syncFailures() (int, string) {
	b, _ := os.ReadFile(r.p.Log)
	n, last := 0, ""
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "Sync failed") {
			n++
			last = line
		}
	}
	if i := strings.Index(last, "err="); i >= 0 {
		last = last[i:]
	}
	if len(last) > 240 {
		last = last[:240]
	}
	return n, last
}

// procStat is what /proc says about a process.
type procStat struct {
	cpu      time.Duration // utime+stime+cutime+cstime
	sys      time.Duration // the kernel part: stime+cstime
	hwm, rss int64         // bytes
	childRSS int64         // bytes, live descendants
}

func readProc(pid int) (procStat, error) {
	s, err := readProcOnly(pid)
	if err != nil {
		return s, err
	}
	// Children still running (an nft or iptables-restore that has just
	// committed but not been reaped) are not in cutime/cstime yet.
	cpu, sys, rss := children(pid, 3)
	s.cpu += cpu
	s.sys += sys
	s.childRSS = rss
	return s, nil
}

// children sums CPU and RSS of pid's live descendants, depth levels down.
func children(pid, depth int) (cpu, sys time.Duration, rss int64) {
	for _, child := range descendants(pid, depth) {
		if cs, err := readProcOnly(child); err == nil {
			cpu += cs.cpu
			sys += cs.sys
			rss += cs.rss
		}
	}
	return cpu, sys, rss
}

func readProcOnly(pid int) (procStat, error) {
	var s procStat
	f := statFields(pid)
	if len(f) < 15 {
		return s, fmt.Errorf("/proc/%d/stat: gone or short", pid)
	}
	// utime, stime, cutime, cstime (fields 14-17): the children's part
	// counts too, since kube-proxy runs nft / iptables-restore and the
	// kernel's commit work is billed to them.
	var ticks, sysTicks int64
	for _, fi := range []int{11, 12, 13, 14} {
		t, _ := strconv.ParseInt(f[fi], 10, 64)
		ticks += t
		if fi == 12 || fi == 14 {
			sysTicks += t
		}
	}
	s.cpu = time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
	s.sys = time.Duration(sysTicks) * time.Second / 100
	st2, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(st2), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) < 1 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmHWM":
			s.hwm = n << 10
		case "VmRSS":
			s.rss = n << 10
		}
	}
	return s, nil
}

// metrics is the part of /metrics the report uses.
type metrics struct {
	syncCount  float64
	syncSeries int     // label sets (IP families) of the sync histogram
	syncMin    float64 // smallest count among them
	syncSum    float64
	kernelObjs float64 // proxyd only; -1 when absent
	syncs      map[string]float64
}

var metricLine = regexp.MustCompile(`(?m)^(kubeproxy_sync_proxy_rules_duration_seconds_count|kubeproxy_sync_proxy_rules_duration_seconds_sum|proxyd_kernel_objects_written_total|proxyd_syncs_total)(\{[^}]*\})? ([0-9.eE+-]+)$`)

func scrape(ctx context.Context, l *lab.Lab) (metrics, error) {
	m := metrics{kernelObjs: -1, syncs: map[string]float64{}}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	code, body, err := l.HTTPGet(ctx, l.NodeNS, "http://127.0.0.1:10249/metrics")
	if err != nil {
		return m, err
	}
	if code != 200 {
		return m, fmt.Errorf("metrics endpoint: status %d", code)
	}
	for _, s := range metricLine.FindAllStringSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(s[3], 64)
		switch s[1] {
		// Summed over label sets: a dual-stack proxy may export one
		// series per IP family.
		case "kubeproxy_sync_proxy_rules_duration_seconds_count":
			m.syncCount += v
			if m.syncSeries == 0 || v < m.syncMin {
				m.syncMin = v
			}
			m.syncSeries++
		case "kubeproxy_sync_proxy_rules_duration_seconds_sum":
			m.syncSum += v
		case "proxyd_kernel_objects_written_total":
			m.kernelObjs = max(m.kernelObjs, 0) + v
		case "proxyd_syncs_total":
			if r := regexp.MustCompile(`result="([^"]*)"`).FindStringSubmatch(s[2]); r != nil {
				m.syncs[r[1]] = v
			}
		}
	}
	return m, nil
}

// waitMetrics retries scrape until it answers or timeout passes.
func waitMetrics(ctx context.Context, l *lab.Lab, r *running, timeout time.Duration) (metrics, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := scrape(ctx, l)
		if err == nil {
			return m, nil
		}
		if r.p.Exited() || time.Now().After(deadline) || ctx.Err() != nil {
			return m, fmt.Errorf("metrics of %s: %w", r.c.name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cleanNode runs the contender's own cleanup and checks the node netns is
// back at the baseline. When it is not, the leftovers are reported and the
// netns is flushed (it is the lab's, and the baseline has no rules).
func cleanNode(ctx context.Context, l *lab.Lab, c contender, base map[string]string) (leftover string, err error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if out, err := l.Exec(cctx, l.NodeNS, c.cleanupArgv(l)...); err != nil {
		leftover = fmt.Sprintf("cleanup failed: %v; ", firstLine(out+" "+err.Error()))
	}
	now, err := snapshot(ctx, l)
	if err != nil {
		return leftover, err
	}
	d := diffSnapshots(base, now)
	if d == "" {
		return leftover, nil
	}
	leftover += "after --cleanup: " + d
	for _, b := range base {
		if b != "" {
			return leftover, fmt.Errorf("node netns not clean after %s (%s) and the baseline has rules; not flushing", c.name, d)
		}
	}
	if _, err := l.Exec(ctx, l.NodeNS, "nft", "flush", "ruleset"); err != nil {
		return leftover, err
	}
	for _, t := range []string{"filter", "nat", "mangle", "raw"} {
		_, _ = l.Exec(ctx, l.NodeNS, "iptables-legacy", "-t", t, "-F")
		_, _ = l.Exec(ctx, l.NodeNS, "iptables-legacy", "-t", t, "-X")
	}
	now, err = snapshot(ctx, l)
	if err != nil {
		return leftover, err
	}
	if d := diffSnapshots(base, now); d != "" {
		return leftover, fmt.Errorf("node netns still not clean after flush: %s", d)
	}
	return leftover, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
