package main

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// check is one measured condition of a target: proxyd's value of key in
// the target's mode is ≤ limit (≥ with atLeast), or with vsPeer the ratio
// of proxyd's value over kube-proxy's is ≤ limit.
type check struct {
	key, unit string
	limit     float64
	vsPeer    bool
	atLeast   bool
}

// target is one row of issue 12's targets table.
type target struct {
	workload  string
	key       rowKey
	mode      string
	metric    string
	goal      string
	checks    []check
	userspace bool // measured by the Go benchmark in userspace.txt, not the lab
}

var (
	k1  = rowKey{n: 1000, pods: 10}
	k10 = rowKey{n: 10000, pods: 10}
	k30 = rowKey{n: 30000, pods: 10}
	k5x = rowKey{n: 5000, pods: 50}
)

// targets are issue 12's, in its order. The idle row's second check is
// "still checking the kernel each period": at least one sync fewer than
// the periods measured (the window's edges may cut one).
var targets = []target{
	{workload: "10k × 10 nftables", key: k10, mode: "nftables", metric: "full sync vs kube-proxy", goal: "≤ 0.1×",
		checks: []check{{key: "full_sync_s", unit: "s", limit: 0.1, vsPeer: true}}},
	{workload: "10k × 10 nftables", key: k10, mode: "nftables", metric: "one endpoint change API→kernel p50 / p99", goal: "≤ 10 / ≤ 30 ms",
		checks: []check{{key: "prog_p50_ms", unit: "ms", limit: 10}, {key: "prog_p99_ms", unit: "ms", limit: 30}}},
	{workload: "10k × 10 nftables", key: k10, mode: "nftables", metric: "userspace part of one change (benchmark)", goal: "≤ 2 ms",
		userspace: true, checks: []check{{unit: "ms", limit: 2}}},
	{workload: "30k × 10 nftables", key: k30, mode: "nftables", metric: "one change p50", goal: "≤ 15 ms (flat in N)",
		checks: []check{{key: "prog_p50_ms", unit: "ms", limit: 15}}},
	{workload: "30k × 10 nftables", key: k30, mode: "nftables", metric: "full sync vs kube-proxy", goal: "≤ 0.1×",
		checks: []check{{key: "full_sync_s", unit: "s", limit: 0.1, vsPeer: true}}},
	{workload: "10k × 10 nftables", key: k10, mode: "nftables", metric: "steady / peak RSS vs kube-proxy", goal: "≤ 0.5× / ≤ 1×",
		checks: []check{{key: "steady_rss_mib", unit: "MiB", limit: 0.5, vsPeer: true}, {key: "peak_rss_mib", unit: "MiB", limit: 1, vsPeer: true}}},
	{workload: "5k × 50 (#135639) nftables", key: k5x, mode: "nftables", metric: "full sync", goal: "≤ 20 s and ≤ 0.1× kube-proxy",
		checks: []check{{key: "full_sync_s", unit: "s", limit: 20}, {key: "full_sync_s", unit: "s", limit: 0.1, vsPeer: true}}},
	{workload: "5k × 50 (#135639) nftables", key: k5x, mode: "nftables", metric: "one change p50", goal: "≤ 15 ms",
		checks: []check{{key: "prog_p50_ms", unit: "ms", limit: 15}}},
	{workload: "5k × 50 (#135639) nftables", key: k5x, mode: "nftables", metric: "steady RSS vs kube-proxy", goal: "≤ 0.5×",
		checks: []check{{key: "steady_rss_mib", unit: "MiB", limit: 0.5, vsPeer: true}}},
	{workload: "1k × 10 iptables", key: k1, mode: "iptables", metric: "full sync vs kube-proxy iptables", goal: "≤ 0.8×",
		checks: []check{{key: "full_sync_s", unit: "s", limit: 0.8, vsPeer: true}}},
	{workload: "10k × 10 idle", key: k10, mode: "nftables", metric: "CPU over 5 sync periods, still checking the kernel each period", goal: "≤ 0.03 s",
		checks: []check{{key: "idle_cpu_s", unit: "s", limit: 0.03}, {key: "idle_syncs", unit: "syncs", limit: 4, atLeast: true}}},
}

// Verdicts, worst first: a row takes the worst of its checks'.
const (
	notMeasuredV = "not measured"
	missed       = "missed"
	undecided    = "undecided (bound only)"
	met          = "met"
)

var verdictRank = map[string]int{notMeasuredV: 0, missed: 1, undecided: 2, met: 3}

// judge says how q compares with a limit: ≤, or ≥ with ge. A capped
// value is a lower bound of the true one, so it can miss a ≤ or meet a ≥
// but not decide the other way.
func judge(q quantity, limit float64, ge bool) string {
	switch {
	case math.IsNaN(q.v):
		return notMeasuredV
	case ge && q.v >= limit, !ge && !q.atLeast && q.v <= limit:
		return met
	case q.atLeast && (ge || q.v < limit):
		return undecided
	}
	return missed
}

// judgeRatio is judge for proxyd over kube-proxy with bounds: a capped
// kube-proxy makes the ratio an upper bound, a capped proxyd a lower one.
func judgeRatio(a, b quantity, limit float64) string {
	switch {
	case math.IsNaN(a.v) || math.IsNaN(b.v) || b.v == 0:
		return notMeasuredV
	case a.atLeast && b.atLeast:
		return undecided
	case b.atLeast:
		if a.v/b.v <= limit {
			return met
		}
		return undecided
	}
	return judge(quantity{v: a.v / b.v, atLeast: a.atLeast}, limit, false)
}

// measure renders the target's checks on one file and judges them.
func (t target) measure(f *csvFile) (text, verdict string) {
	verdict = met
	var parts []string
	worse := func(v string) {
		if verdictRank[v] < verdictRank[verdict] {
			verdict = v
		}
	}
	a, b := "proxyd-"+t.mode, "kube-proxy-"+t.mode
	for _, c := range t.checks {
		q, p := f.get(a, c.key), f.get(b, c.key)
		if !c.vsPeer {
			txt := withUnit(q, c.unit)
			if !math.IsNaN(p.v) {
				txt += " (kube-proxy " + withUnit(p, c.unit) + ")"
			}
			parts = append(parts, txt)
			worse(judge(q, c.limit, c.atLeast))
			continue
		}
		// The run's own ratio column, computed before rounding, when it
		// has one.
		r := f.cell("proxyd/kube-proxy "+t.mode, c.key)
		if r == "" {
			r = ratioOf(q, p)
		}
		if r == "" {
			r = "n/a"
		}
		parts = append(parts, fmt.Sprintf("%s vs %s = %s", withUnit(q, c.unit), withUnit(p, c.unit), strings.ReplaceAll(r, "x", "×")))
		worse(judgeRatio(q, p, c.limit))
	}
	return strings.Join(parts, "; "), verdict
}

func withUnit(q quantity, unit string) string {
	if math.IsNaN(q.v) {
		return "n/a"
	}
	if q.atLeast {
		return q.cell()
	}
	return fmtVal(q.v) + " " + unit
}

// targetsTable is issue 12's targets with what the CSVs (and the
// userspace benchmark's output) say about each: every number names the
// file it comes from and the day it was measured.
func targetsTable(files []csvFile, us *userspaceResult) string {
	byKey := map[rowKey]*csvFile{}
	for i := range files {
		byKey[files[i].key] = &files[i]
	}
	var b strings.Builder
	b.WriteString("| workload | metric | target | measured: proxyd (vs upstream kube-proxy, same run) | verdict | source |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, t := range targets {
		text, verdict, source := "—", notMeasuredV, "no results-"+t.key.fileTag()+".csv"
		switch {
		case t.userspace && us != nil:
			q := quantity{v: median(us.ms)}
			text = fmt.Sprintf("%s (median of %d)", withUnit(q, "ms"), len(us.ms))
			verdict = judge(q, t.checks[0].limit, false)
			source = fmt.Sprintf("%s, %s", userspaceFile, us.date)
		case t.userspace:
			source = "the Go benchmark is not wired in yet (make bench BENCH_USERSPACE=...)"
		case byKey[t.key] != nil:
			f := byKey[t.key]
			text, verdict = t.measure(f)
			source = fmt.Sprintf("%s, %s", f.name, f.date())
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", t.workload, t.metric, t.goal, text, verdict, source)
	}
	return b.String()
}

// targetsDoc is targets.md.
func targetsDoc(table string) string {
	return "# Targets of issue 12, from the CSVs in this directory\n\n" +
		"Generated by `go run ./test/bench` (also `-report-only`); do not edit. Ratios are proxyd over\n" +
		"upstream kube-proxy v1.37.2 measured in the same run; \"> 20 min\" is a full sync stopped at\n" +
		"the cap, which makes a ratio against it a bound.\n\n" + table
}

// userspaceFile holds `go test -bench` output of the userspace benchmark,
// after "# date=" and "# cmd=" lines (make bench writes it when
// BENCH_USERSPACE names the benchmark).
const userspaceFile = "userspace.txt"

type userspaceResult struct {
	ms   []float64 // userspace-ms/op of each benchmark line
	date string
}

// readUserspace reads userspaceFile from dir; nil when there is none.
func readUserspace(dir string) (*userspaceResult, error) {
	f, err := os.Open(filepath.Join(dir, userspaceFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r userspaceResult
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "# date="); ok && len(d) >= 10 {
			r.date = d[:10]
		}
		fs := strings.Fields(line)
		if len(fs) < 2 || !strings.HasPrefix(fs[0], "Benchmark") {
			continue
		}
		for i := 1; i < len(fs); i++ {
			if fs[i] == "userspace-ms/op" {
				if v, err := strconv.ParseFloat(fs[i-1], 64); err == nil {
					r.ms = append(r.ms, v)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", userspaceFile, err)
	}
	if len(r.ms) == 0 {
		return nil, fmt.Errorf("%s: no benchmark line reports userspace-ms/op", userspaceFile)
	}
	if r.date == "" {
		r.date = "undated"
	}
	return &r, nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Markers around the README's generated section.
const (
	beginMarker = "<!-- BEGIN targets table: generated by test/bench from docs/bench/*.csv; do not edit -->"
	endMarker   = "<!-- END targets table -->"
)

// replaceMarked puts table between the markers of the file at path.
func replaceMarked(path, table string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no generated section (a line %q, later a line %q)", path, beginMarker, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n" + table + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
