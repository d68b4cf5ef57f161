package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// params are the knobs of one measurement run.
type params struct {
	n, k, connects int
	syncCap        time.Duration // full sync: stop and report "> syncCap"
	syncTimeout    time.Duration // the restarted process's first sync
	changeTimeout  time.Duration
	idlePeriod     time.Duration
	idlePeriods    int
	// heapDir, when set, receives proxyd's heap profile at steady state.
	heapDir string
	logf    func(string, ...any)
}

// result is one contender's numbers at one N; values are keyed by the
// metric keys of metricDefs, NaN when not measured.
type result struct {
	name     string
	status   string        // ok, capped: ..., skipped: ..., failed: ...
	capped   time.Duration // full sync still running when stopped after this
	v        map[string]float64
	leftover string
	view     string
}

func newResult(name string) *result {
	r := &result{name: name, status: "ok", v: map[string]float64{}}
	for _, d := range metricDefs {
		r.v[d.key] = math.NaN()
	}
	return r
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return -1
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 {
	if d < 0 {
		return math.NaN()
	}
	return float64(d) / float64(time.Millisecond)
}

// waitProgrammed polls until the contender dispatches all n bench Services.
func waitProgrammed(ctx context.Context, r *running, v kernelView, w *workload, timeout time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(timeout)
	got := 0
	for {
		if st, err := readProc(r.p.PID()); err == nil {
			r.peakChildRSS = max(r.peakChildRSS, st.childRSS)
		}
		n, err := v.programmed(ctx, w.ipSet)
		if err != nil {
			return 0, err
		}
		got = n
		if n >= len(w.names) {
			return time.Since(r.start), nil
		}
		if r.p.Exited() {
			return 0, errExited
		}
		if n == 0 && time.Since(r.start) > 5*time.Second {
			if fails, last := r.syncFailures(); fails >= 4 {
				return 0, fmt.Errorf("%w: %d of %d Services programmed; %d failed syncs logged, last: %s",
					errSyncFailing, got, len(w.names), fails, last)
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: %d of %d Services programmed after %v", errCapped, got, len(w.names), timeout)
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		// 20 ms at first; then 2% of the time so far (at most 500 ms),
		// so reading a large map does not compete with the contender.
		time.Sleep(min(max(20*time.Millisecond, time.Since(r.start)/50), 500*time.Millisecond))
	}
}

var (
	errExited  = errors.New("process exited")
	errTimeout = errors.New("timeout")
	// errCapped: the full sync did not finish within -sync-cap.
	errCapped = errors.New("full sync not done")
	// errSyncFailing: nothing programmed and the contender keeps logging
	// failed syncs; waiting for the timeout would only waste time.
	errSyncFailing = errors.New("syncs keep failing")
)

// runContender measures one contender: full sync, programming latency,
// memory, connect latency; then idle resync in a second process.
func runContender(ctx context.Context, l *lab.Lab, c contender, w *workload, p params, base map[string]string) (res *result, herr error) {
	res = newResult(c.name)
	logf := p.logf
	v, err := c.view(l)
	if err != nil {
		return res, err
	}
	defer v.close()
	res.view = v.how()

	// Phase 1: full sync, programming latency, memory, connects.
	r, err := start(l, c, 30*time.Second, "main")
	if err != nil {
		return res, err
	}
	d, err := waitProgrammed(ctx, r, v, w, p.syncCap)
	if err != nil {
		switch {
		case errors.Is(err, errExited) && r.notAvailable():
			res.status = "skipped: " + firstLine(r.exitReason())
		case errors.Is(err, errExited):
			res.status = "failed: " + r.exitReason()
		case errors.Is(err, errCapped):
			res.capped = p.syncCap
			res.status = "capped: " + err.Error() + "; stopped"
		case errors.Is(err, errSyncFailing):
			res.status = "failed: full sync " + err.Error()
		default:
			_ = r.stopAll(logf)
			return res, err
		}
		if err := r.stopAll(logf); err != nil {
			logf("%v", err)
		}
		left, cerr := cleanNode(ctx, l, c, base)
		res.leftover = left
		return res, cerr
	}
	st, _ := readProc(r.p.PID())
	res.v["full_sync_s"] = d.Seconds()
	res.v["full_sync_cpu_s"] = st.cpu.Seconds()
	res.v["full_sync_child_rss_mib"] = float64(r.peakChildRSS) / (1 << 20)
	logf("%s: all %d Services programmed %.2fs after start (CPU %.2fs)", c.name, p.n, d.Seconds(), st.cpu.Seconds())

	// The kernel shows the rules a moment before the contender records the
	// sync in its metrics; wait for that so the change phase counts only
	// its own syncs.
	if _, err := waitFirstSync(ctx, l, r, p.syncTimeout); err != nil {
		logf("%s: %v", c.name, err)
	}
	ports, err := v.ports(ctx)
	for try := 0; err == nil && len(ports) < p.n && try < 50; try++ {
		time.Sleep(100 * time.Millisecond)
		ports, err = v.ports(ctx)
	}
	if err != nil {
		_ = r.stop()
		return res, fmt.Errorf("%s: find the service ports: %w", c.name, err)
	}
	m0, err := waitMetrics(ctx, l, r, 20*time.Second)
	if err != nil {
		logf("%s: %v", c.name, err)
	}
	c0, _ := readProc(r.p.PID())
	lat, apiLat, polls, pollTime, timeouts, err := programmingLatency(ctx, r, v, w, ports, p)
	if err != nil {
		_ = r.stop()
		return res, err
	}
	if c1, err := readProc(r.p.PID()); err == nil {
		res.v["change_cpu_user_s"] = ((c1.cpu - c1.sys) - (c0.cpu - c0.sys)).Seconds()
		res.v["change_cpu_sys_s"] = (c1.sys - c0.sys).Seconds()
	}
	res.v["prog_p50_ms"] = ms(percentile(lat, 50))
	res.v["prog_p99_ms"] = ms(percentile(lat, 99))
	res.v["prog_max_ms"] = ms(percentile(lat, 100))
	res.v["prog_timeouts"] = float64(timeouts)
	res.v["api_write_p50_ms"] = ms(percentile(apiLat, 50))
	if polls > 0 {
		res.v["poll_ms"] = ms(pollTime / time.Duration(polls))
	}
	logf("%s: programming latency over %d changes: p50 %.1f ms, p99 %.1f ms (%d timeouts, poll %.2f ms)", c.name,
		len(lat), res.v["prog_p50_ms"], res.v["prog_p99_ms"], timeouts, res.v["poll_ms"])
	if m1, err := scrape(ctx, l); err == nil && m1.syncCount > m0.syncCount {
		res.v["sync_avg_ms"] = 1000 * (m1.syncSum - m0.syncSum) / (m1.syncCount - m0.syncCount)
		res.v["change_syncs"] = m1.syncCount - m0.syncCount
		if m0.kernelObjs >= 0 && m1.kernelObjs >= 0 {
			res.v["objects_per_sync"] = (m1.kernelObjs - m0.kernelObjs) / (m1.syncCount - m0.syncCount)
			res.v["change_full_syncs"] = m1.syncs["full"] - m0.syncs["full"]
		}
	}
	time.Sleep(3 * time.Second)
	if st, err := readProc(r.p.PID()); err == nil {
		res.v["peak_rss_mib"] = float64(st.hwm) / (1 << 20)
		res.v["steady_rss_mib"] = float64(st.rss) / (1 << 20)
	}
	if p.heapDir != "" && c.proxydV {
		saveHeap(ctx, l, filepath.Join(p.heapDir, fmt.Sprintf("heap-%s-%d.pprof", c.name, p.n)), logf)
	}
	conn, fails, err := connectLatency(l.ClientNS, w.vips(), p.connects)
	if err != nil {
		_ = r.stop()
		return res, err
	}
	res.v["conn_p50_ms"] = ms(percentile(conn, 50))
	res.v["conn_p99_ms"] = ms(percentile(conn, 99))
	res.v["conn_failures"] = float64(fails)
	logf("%s: %d connects to VIPs: p50 %.3f ms p99 %.3f ms, %d failed", c.name, p.connects,
		res.v["conn_p50_ms"], res.v["conn_p99_ms"], fails)
	if r.p.Exited() {
		res.status = "failed: " + r.exitReason()
	}
	if err := r.stop(); err != nil {
		logf("%v", err)
	}
	if err := w.resetReady(ctx); err != nil {
		return res, err
	}

	// Phase 2: idle resync with a short sync period, in a fresh process.
	if err := idle(ctx, l, c, v, w, p, res); err != nil {
		if !errors.Is(err, errExited) && !errors.Is(err, errTimeout) && !errors.Is(err, errSyncFailing) {
			return res, err
		}
		res.status = "failed: idle phase: " + err.Error()
	}
	left, err := cleanNode(ctx, l, c, base)
	res.leftover = left
	if left != "" {
		logf("%s: %s", c.name, left)
	}
	return res, err
}

// saveHeap writes the heap profile proxyd serves (with --profiling) to
// path, after a garbage collection, so it shows what stays in use.
func saveHeap(ctx context.Context, l *lab.Lab, path string, logf func(string, ...any)) {
	code, body, err := l.HTTPGet(ctx, l.NodeNS, "http://127.0.0.1:10249/debug/pprof/heap?gc=1")
	if err == nil && code != 200 {
		err = fmt.Errorf("HTTP %d", code)
	}
	if err == nil {
		err = os.WriteFile(path, []byte(body), 0o644)
	}
	if err != nil {
		logf("heap profile: %v", err)
		return
	}
	logf("heap profile in %s", path)
	// The runtime's own account, to tell live objects from the heap's
	// headroom and what was returned to the OS.
	if code, text, err := l.HTTPGet(ctx, l.NodeNS, "http://127.0.0.1:10249/debug/pprof/heap?debug=1"); err == nil && code == 200 {
		var stats []string
		for _, line := range strings.Split(text, "\n") {
			for _, k := range []string{"# HeapAlloc", "# HeapInuse", "# HeapIdle", "# HeapReleased", "# Sys", "# NextGC", "# Stack", "# NumGC"} {
				if strings.HasPrefix(line, k+" ") {
					stats = append(stats, strings.TrimPrefix(line, "# "))
				}
			}
		}
		logf("runtime memory: %s", strings.Join(stats, ", "))
	}
}

// programmingLatency makes p.k single-endpoint changes one after another,
// each on another Service, and times API write → visible in the kernel.
func programmingLatency(ctx context.Context, r *running, v kernelView, w *workload, ports map[string]portRef, p params) (
	lat, api []time.Duration, polls int, pollTime time.Duration, timeouts int, err error) {
	order := rand.Perm(len(w.names))
	for k := 0; k < p.k; k++ {
		i := order[k%len(order)]
		port, ok := ports[w.names[i]]
		if !ok {
			return nil, nil, 0, 0, 0, fmt.Errorf("%s: %s not found in the kernel", r.c.name, w.names[i])
		}
		want, before, after, err := w.toggle(ctx, i)
		if err != nil {
			return nil, nil, 0, 0, 0, err
		}
		api = append(api, after.Sub(before))
		deadline := before.Add(p.changeTimeout)
		for {
			t := time.Now()
			n, err := v.endpoints(ctx, port)
			now := time.Now()
			polls++
			pollTime += now.Sub(t)
			if err == nil && n == want {
				lat = append(lat, now.Sub(before))
				break
			}
			if now.After(deadline) || r.p.Exited() {
				timeouts++
				break
			}
			if err := ctx.Err(); err != nil {
				return nil, nil, 0, 0, 0, err
			}
			if _, isNFT := v.(*nftView); isNFT {
				time.Sleep(500 * time.Microsecond)
				pollTime += time.Since(now)
			}
		}
		if r.p.Exited() {
			return lat, api, polls, pollTime, timeouts, nil
		}
	}
	return lat, api, polls, pollTime, timeouts, nil
}

// idle restarts the contender with p.idlePeriod, waits for its first full
// sync and one quiet period, then measures p.idlePeriods periods.
func idle(ctx context.Context, l *lab.Lab, c contender, v kernelView, w *workload, p params, res *result) error {
	r, err := start(l, c, p.idlePeriod, "idle")
	if err != nil {
		return err
	}
	defer func() { _ = r.stop() }()
	// The first process left its rules in place, so the kernel already
	// shows every Service: what counts is this process's own first sync
	// (a takeover of existing rules), seen in its sync metric.
	d, err := waitFirstSync(ctx, l, r, p.syncTimeout)
	if err != nil {
		return err
	}
	res.v["restart_sync_s"] = d.Seconds()
	p.logf("%s: restarted over its own rules: first sync done %.2fs after start", c.name, d.Seconds())
	if n, err := v.programmed(ctx, w.ipSet); err != nil || n < len(w.names) {
		return fmt.Errorf("%w: after the restart sync %d of %d Services programmed (%v)", errTimeout, n, len(w.names), err)
	}
	time.Sleep(p.idlePeriod + p.idlePeriod/2)
	s0, err := readProc(r.p.PID())
	if err != nil {
		return err
	}
	m0, err := scrape(ctx, l)
	if err != nil {
		return err
	}
	act, err := startActivity(l.NodeNS)
	if err != nil {
		return err
	}
	window := time.Duration(p.idlePeriods) * p.idlePeriod
	select {
	case <-time.After(window):
	case <-ctx.Done():
	}
	gens, objs, aerr := act.stop()
	s1, err := readProc(r.p.PID())
	if err != nil {
		return fmt.Errorf("%w: %v", errExited, err)
	}
	m1, err := scrape(ctx, l)
	if err != nil {
		return err
	}
	res.v["idle_cpu_s"] = (s1.cpu - s0.cpu).Seconds()
	res.v["idle_syncs"] = m1.syncCount - m0.syncCount
	if m0.kernelObjs >= 0 && m1.kernelObjs >= 0 {
		res.v["idle_kernel_objects"] = m1.kernelObjs - m0.kernelObjs
	}
	if aerr == nil {
		res.v["idle_nft_gens"] = float64(gens)
		res.v["idle_nft_objects"] = float64(objs)
	} else {
		p.logf("%s: nftables monitor: %v (idle nft counts left out)", c.name, aerr)
	}
	p.logf("%s: idle %v: CPU %.2fs, %v syncs, %d nft transactions with %d objects, proxyd kernel objects %v",
		c.name, window, res.v["idle_cpu_s"], res.v["idle_syncs"], gens, objs, res.v["idle_kernel_objects"])
	return nil
}

// waitFirstSync waits until every IP family of the contender has finished
// a sync (kube-proxy runs one proxier per family, proxyd one for both),
// by its kubeproxy_sync_proxy_rules_duration_seconds series.
func waitFirstSync(ctx context.Context, l *lab.Lab, r *running, timeout time.Duration) (time.Duration, error) {
	want := 1
	if r.c.proxy == "kube-proxy" {
		want = 2
	}
	deadline := time.Now().Add(timeout)
	for {
		if m, err := scrape(ctx, l); err == nil && m.syncSeries >= want && m.syncMin >= 1 {
			return time.Since(r.start), nil
		}
		if r.p.Exited() {
			return 0, fmt.Errorf("%w: %s", errExited, r.exitReason())
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: no first sync within %v", errTimeout, timeout)
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		time.Sleep(min(max(50*time.Millisecond, time.Since(r.start)/50), 500*time.Millisecond))
	}
}

func (w *workload) vips() []string {
	out := make([]string, len(w.ips))
	for i, ip := range w.ips {
		out[i] = net.JoinHostPort(ip, fmt.Sprint(benchPort))
	}
	return out
}

// connectLatency times count TCP connects from netns ns, each to a random
// one of addrs, on one OS thread switched into ns (no per-dial namespace
// switch inside the timed part). Connections are closed with RST so no
// TIME_WAIT piles up.
func connectLatency(ns string, addrs []string, count int) (d []time.Duration, fails int, err error) {
	type out struct {
		d     []time.Duration
		fails int
		err   error
	}
	ch := make(chan out, 1)
	go func() {
		runtime.LockOSThread()
		var o out
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- out{err: err}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- out{err: err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			ch <- out{err: err}
			return
		}
		dialer := net.Dialer{Timeout: 2 * time.Second, FallbackDelay: -1}
		for i := 0; i < count; i++ {
			addr := addrs[rand.Intn(len(addrs))]
			t := time.Now()
			c, err := dialer.Dial("tcp", addr)
			el := time.Since(t)
			if err != nil {
				o.fails++
				continue
			}
			o.d = append(o.d, el)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
		}
		if err := netns.Set(orig); err != nil {
			o.err = fmt.Errorf("leave netns %s: %w", ns, err)
			ch <- o
			return // thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		ch <- o
	}()
	o := <-ch
	return o.d, o.fails, o.err
}
