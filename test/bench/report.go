package main

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func newClientset(cfg *rest.Config) (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(cfg)
}

type metricDef struct{ key, unit, label string }

// metricDefs are the table's rows, in order.
var metricDefs = []metricDef{
	{"full_sync_s", "s", "full sync: start -> all N Services in the kernel"},
	{"full_sync_cpu_s", "s", "CPU used by then (incl. children)"},
	{"full_sync_child_rss_mib", "MiB", "largest RSS of child processes seen while polling (nft, iptables-restore)"},
	{"prog_p50_ms", "ms", "programming latency p50 (API write -> kernel)"},
	{"prog_p99_ms", "ms", "programming latency p99"},
	{"prog_max_ms", "ms", "programming latency max"},
	{"prog_timeouts", "", "changes not visible within the timeout"},
	{"sync_avg_ms", "ms", "mean sync duration during the changes (own metric)"},
	{"change_syncs", "", "syncs during the changes (own metric)"},
	{"change_full_syncs", "", "of which full syncs (proxyd_syncs_total)"},
	{"objects_per_sync", "", "kernel objects written per sync during the changes (proxyd)"},
	{"change_cpu_user_s", "s", "CPU in user space over all the changes (incl. children)"},
	{"change_cpu_sys_s", "s", "CPU in the kernel over all the changes (netlink commits; incl. children)"},
	{"api_write_p50_ms", "ms", "API write p50 (included in the latency)"},
	{"poll_ms", "ms", "kernel poll granularity"},
	{"restart_sync_s", "s", "restart over its own rules: start -> first sync done"},
	{"idle_cpu_s", "s", "idle: CPU over the idle window"},
	{"idle_syncs", "", "idle: syncs in the window (own metric)"},
	{"idle_kernel_objects", "", "idle: proxyd_kernel_objects_written_total delta"},
	{"idle_nft_gens", "", "idle: nf_tables transactions (monitor)"},
	{"idle_nft_objects", "", "idle: objects in those transactions (monitor)"},
	{"peak_rss_mib", "MiB", "memory peak (VmHWM)"},
	{"steady_rss_mib", "MiB", "memory steady (VmRSS after the changes)"},
	{"conn_p50_ms", "ms", "TCP connect to a VIP p50 (client netns)"},
	{"conn_p99_ms", "ms", "TCP connect to a VIP p99"},
	{"conn_failures", "", "failed connects"},
}

func fmtVal(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v == math.Trunc(v) && math.Abs(v) < 1e9:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

// ratio is proxyd's value over kube-proxy's in one mode, as text.
func ratio(rs []*result, mode, key string) string {
	var a, b *result
	for _, r := range rs {
		if r.name == "proxyd-"+mode {
			a = r
		} else if r.name == "kube-proxy-"+mode {
			b = r
		}
	}
	if a == nil || b == nil || a.status != "ok" || b.status != "ok" {
		return ""
	}
	x, y := a.v[key], b.v[key]
	if math.IsNaN(x) || math.IsNaN(y) || y == 0 {
		return ""
	}
	return strconv.FormatFloat(x/y, 'f', 2, 64) + "x"
}

// rows is the table: header, then one row per metric, then status and
// leftovers.
func rows(rs []*result) [][]string {
	head := []string{"metric", "unit"}
	for _, r := range rs {
		head = append(head, r.name)
	}
	head = append(head, "proxyd/kube-proxy nftables", "proxyd/kube-proxy iptables")
	out := [][]string{head}
	st := []string{"status", ""}
	for _, r := range rs {
		st = append(st, r.status)
	}
	out = append(out, append(st, "", ""))
	for _, d := range metricDefs {
		row := []string{d.key, d.unit}
		for _, r := range rs {
			if r.status != "ok" {
				row = append(row, "n/a")
				continue
			}
			row = append(row, fmtVal(r.v[d.key]))
		}
		out = append(out, append(row, ratio(rs, "nftables", d.key), ratio(rs, "iptables", d.key)))
	}
	left := []string{"leftover_after_cleanup", ""}
	for _, r := range rs {
		if r.leftover == "" {
			left = append(left, "none")
		} else {
			left = append(left, r.leftover)
		}
	}
	out = append(out, append(left, "", ""))
	kv := []string{"kernel_read_by", ""}
	for _, r := range rs {
		kv = append(kv, r.view)
	}
	return append(out, append(kv, "", ""))
}

func envLines(e runEnv) []string {
	var out []string
	if e.note != "" {
		out = append(out, "note="+e.note)
	}
	return append(out,
		fmt.Sprintf("n=%d", e.n), fmt.Sprintf("k=%d", e.k), fmt.Sprintf("connects=%d", e.connects),
		fmt.Sprintf("endpoints_per_service=%d", e.pods),
		fmt.Sprintf("workload_create_s=%.1f", e.createS),
		fmt.Sprintf("direct_pod_connect_p50_ms=%.3f", e.directP50),
		fmt.Sprintf("direct_pod_connect_p99_ms=%.3f", e.directP99),
		fmt.Sprintf("lab_start_s=%.1f", e.labStartS),
		fmt.Sprintf("wall_s=%.0f", e.wall.Seconds()),
		fmt.Sprintf("date=%s", e.when.Format(time.RFC3339)),
		fmt.Sprintf("kernel=%s", kernelRelease()),
		fmt.Sprintf("cpus=%d", runtime.NumCPU()),
		fmt.Sprintf("cmd=%s", e.cmdline),
	)
}

func kernelRelease() string {
	b, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// table renders the result table for the terminal.
func table(n int, rs []*result, e runEnv) string {
	t := rows(rs)
	// Long strings (status, leftovers) go below the table.
	var notes []string
	for _, row := range t {
		if row[0] == "status" || row[0] == "leftover_after_cleanup" || row[0] == "kernel_read_by" {
			for i, c := range row[2 : 2+len(rs)] {
				if c != "ok" && c != "none" {
					notes = append(notes, fmt.Sprintf("  %s %s: %s", rs[i].name, row[0], c))
				}
			}
		}
	}
	// The table shows every row but the long-string ones, status cut short.
	var shown [][]string
	for _, row := range t {
		if row[0] == "leftover_after_cleanup" || row[0] == "kernel_read_by" {
			continue
		}
		if row[0] == "status" {
			row = slices.Clone(row)
			for i, c := range row {
				row[i] = c[:min(len(c), 12)]
			}
		}
		shown = append(shown, row)
	}
	width := make([]int, len(t[0]))
	for _, row := range shown {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n== N=%d Services x %d endpoints, K=%d changes, %d connects ==\n", n, e.pods, e.k, e.connects)
	for _, row := range shown {
		for i, c := range row {
			if i < 2 {
				fmt.Fprintf(&b, "%-*s  ", width[i], c)
			} else {
				fmt.Fprintf(&b, "%*s  ", width[i], c)
			}
		}
		b.WriteString("\n")
	}
	for _, l := range envLines(e) {
		b.WriteString("  " + l + "\n")
	}
	b.WriteString(strings.Join(notes, "\n") + "\n")
	return b.String()
}

func writeCSV(path string, rs []*result, e runEnv) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, l := range envLines(e) {
		fmt.Fprintf(f, "# %s\n", l)
	}
	w := csv.NewWriter(f)
	if err := w.WriteAll(rows(rs)); err != nil {
		return err
	}
	return f.Close()
}

// csvFile is one results-<N>.csv read back.
type csvFile struct {
	n    int
	env  []string
	rows [][]string
}

func (c csvFile) value(contender, key string) float64 {
	col := -1
	for i, h := range c.rows[0] {
		if h == contender {
			col = i
		}
	}
	if col < 0 {
		return math.NaN()
	}
	for _, r := range c.rows[1:] {
		if r[0] == key && col < len(r) {
			v, err := strconv.ParseFloat(r[col], 64)
			if err != nil {
				return math.NaN()
			}
			return v
		}
	}
	return math.NaN()
}

func (c csvFile) contenders() []string {
	h := c.rows[0]
	var out []string
	for _, name := range h[2:] {
		if !strings.HasPrefix(name, "proxyd/") {
			out = append(out, name)
		}
	}
	return out
}

func readCSVs(dir string) ([]csvFile, error) {
	paths, _ := filepath.Glob(filepath.Join(dir, "results-*.csv"))
	var out []csvFile
	for _, p := range paths {
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "results-"), ".csv"))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		cf := csvFile{n: n}
		var body strings.Builder
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "# "); ok {
				cf.env = append(cf.env, s)
			} else {
				body.WriteString(sc.Text() + "\n")
			}
		}
		r := csv.NewReader(strings.NewReader(body.String()))
		r.FieldsPerRecord = -1
		if cf.rows, err = r.ReadAll(); err != nil || len(cf.rows) == 0 {
			return nil, fmt.Errorf("%s: %v", p, err)
		}
		out = append(out, cf)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n < out[j].n })
	return out, nil
}

// writeReport redraws the plots and README.md from every results-*.csv in dir.
func writeReport(dir string) error {
	files, err := readCSVs(dir)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sync-vs-n.svg"), []byte(syncPlot(files)), 0o644); err != nil {
		return err
	}
	for _, f := range files {
		for _, pl := range []struct {
			name, title, k1, k2 string
			logY                bool
		}{
			{"latency", "network programming latency (ms)", "prog_p50_ms", "prog_p99_ms", true},
			{"connect", "TCP connect to a VIP (ms)", "conn_p50_ms", "conn_p99_ms", false},
		} {
			svg := barPlot(fmt.Sprintf("%s, N=%d", pl.title, f.n), f, pl.k1, pl.k2, pl.logY)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d.svg", pl.name, f.n)), []byte(svg), 0o644); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte(readmeWithNotes(dir, files)), 0o644); err != nil {
		return err
	}
	return writePNGs(dir)
}

// writePNGs renders every plot to PNG too when rsvg-convert (Debian
// librsvg2-bin) is installed; without it the SVGs are the plots.
func writePNGs(dir string) error {
	tool, err := exec.LookPath("rsvg-convert")
	if err != nil {
		return nil
	}
	svgs, _ := filepath.Glob(filepath.Join(dir, "*.svg"))
	for _, svg := range svgs {
		png := strings.TrimSuffix(svg, ".svg") + ".png"
		if out, err := exec.Command(tool, "-o", png, svg).CombinedOutput(); err != nil {
			return fmt.Errorf("rsvg-convert %s: %v: %s", svg, err, out)
		}
	}
	return nil
}

func readme(files []csvFile) string {
	labels := map[string]string{}
	for _, d := range metricDefs {
		labels[d.key] = d.label
	}
	var b strings.Builder
	b.WriteString(`# proxyd vs upstream kube-proxy — benchmark results

Generated by ` + "`go run ./test/bench`" + ` (test/bench/) from the results-<N>.csv files in this
directory; every number below was measured by that harness on the machine named in each section.
Re-running overwrites the CSV of the same N and regenerates this file and the plots.

Method, per N: one lab (real etcd + kube-apiserver, node netns, echo Pods), N selector-less
Services (one TCP port 80 -> 8080) each with one EndpointSlice of one endpoint per Pod, written by
the harness through an unthrottled client. The contenders then run one after another in the node
netns with the same flags (` + "`--sync-period 30s`, min sync period 0" + `); after each the harness runs
the contender's own ` + "`--cleanup`" + ` and diffs ` + "`nft list ruleset`, `iptables-save`, `iptables-legacy-save`" + `
against the pre-contender baseline (leftovers are reported, then flushed).

- full sync: process start until all N ClusterIPs are in the kernel (nftables: elements of the
  ` + "`service-ips`" + ` map read over netlink every 20 ms; iptables: ` + "`<PREFIX>SERVICES`" + ` rules in iptables-save).
- programming latency: K changes one after another, each on another Service, toggling one
  endpoint's readiness; from just before the API write until the service chain shows the new
  endpoint count (nftables: numgen modulus read over netlink; iptables: ` + "`-j <PREFIX>SEP-`" + ` and ` + "`-j DNAT`" + ` rules in
  ` + "`iptables -S <chain>`" + `). The poll granularity row is the mean time of one poll: latencies are
  late by up to that much.
- restart + idle: the contender is restarted with ` + "`--sync-period 2s`" + ` over the rules its first process
  left in place; restart_sync_s is start -> its first sync done (its sync-duration metric, every IP
  family). After 1.5 more periods of quiet, CPU, its sync count, proxyd's kernel-object counter and
  every nf_tables transaction in the netns (netlink monitor) are counted over 5 periods. Note that
  kube-proxy 1.37 uses the sync period only as a retry interval (periodic resync is 1 h), so 0 idle
  syncs is its normal behaviour, while proxyd re-checks the kernel every period.
- CPU is utime+stime+cutime+cstime from /proc (10 ms ticks): kube-proxy's nft / iptables-restore
  children and the kernel work done in their syscalls count.
- memory: VmHWM and VmRSS of the first process after the changes.
- connect: TCP connects from the client netns to random VIPs, timed around connect() only, on a
  thread already in the netns; the direct-to-Pod figure is the same loop without a proxy.

`)
	for i := len(files) - 1; i >= 0; i-- {
		f := files[i]
		fmt.Fprintf(&b, "## N = %d\n\n", f.n)
		for _, e := range f.env {
			fmt.Fprintf(&b, "- %s\n", e)
		}
		b.WriteString("\n")
		for ri, r := range f.rows {
			if ri > 0 && (r[0] == "leftover_after_cleanup" || r[0] == "kernel_read_by" || r[0] == "status") {
				continue
			}
			what := "what"
			if ri > 0 {
				what = labels[r[0]]
			}
			cells := append([]string{r[0], what}, r[1:]...)
			b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
			if ri == 0 {
				b.WriteString(strings.Repeat("|---", len(cells)) + "|\n")
			}
		}
		b.WriteString("\n")
		for _, r := range f.rows[1:] {
			if r[0] != "status" && r[0] != "leftover_after_cleanup" && r[0] != "kernel_read_by" {
				continue
			}
			for ci, c := range r[2:] {
				if 2+ci < len(f.rows[0]) && c != "" {
					fmt.Fprintf(&b, "- %s %s: %s\n", f.rows[0][2+ci], r[0], c)
				}
			}
		}
		fmt.Fprintf(&b, "\n![programming latency](latency-%d.svg) ![connect latency](connect-%d.svg)\n\n", f.n, f.n)
	}
	b.WriteString("## Full sync vs N\n\n![full sync time vs N](sync-vs-n.svg)\n")
	return b.String()
}

// readmeWithNotes is readme plus notes.md from dir, if any: hand-written
// observations that survive regeneration.
func readmeWithNotes(dir string, files []csvFile) string {
	s := readme(files)
	if b, err := os.ReadFile(filepath.Join(dir, "notes.md")); err == nil {
		s += "\n" + string(b)
	}
	return s
}
