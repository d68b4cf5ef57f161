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

// quantity is one measured value; atLeast marks a full sync stopped at
// the cap, whose true value is larger than v.
type quantity struct {
	v       float64
	atLeast bool
}

var notMeasured = quantity{v: math.NaN()}

// get is the result's value of key: NaN unless the contender ran to the
// end, the cap for the full sync of a capped one.
func (r *result) get(key string) quantity {
	switch {
	case r.capped > 0 && key == "full_sync_s":
		return quantity{v: r.capped.Seconds(), atLeast: true}
	case r.status != "ok":
		return notMeasured
	}
	return quantity{v: r.v[key]}
}

// cell is the quantity as the tables and CSVs write it: "> 20 min" for a
// capped full sync.
func (q quantity) cell() string {
	if !q.atLeast {
		return fmtVal(q.v)
	}
	d := time.Duration(q.v * float64(time.Second))
	if d%time.Minute == 0 {
		return fmt.Sprintf("> %d min", int(d/time.Minute))
	}
	return fmt.Sprintf("> %s s", fmtVal(q.v))
}

// parseQuantity is cell's inverse; anything else (n/a, text) is NaN.
func parseQuantity(c string) quantity {
	if rest, ok := strings.CutPrefix(c, "> "); ok {
		num, unit, _ := strings.Cut(rest, " ")
		v, err := strconv.ParseFloat(num, 64)
		switch {
		case err != nil:
			return notMeasured
		case unit == "min":
			return quantity{v: 60 * v, atLeast: true}
		case unit == "s":
			return quantity{v: v, atLeast: true}
		}
		return notMeasured
	}
	v, err := strconv.ParseFloat(c, 64)
	if err != nil {
		return notMeasured
	}
	return quantity{v: v}
}

// ratioOf is a over b as text: "0.12x", "< 0.013x" when only b was
// capped (rounded up, so the bound stays true), "> 4.5x" when only a was;
// "" when it says nothing.
func ratioOf(a, b quantity) string {
	if math.IsNaN(a.v) || math.IsNaN(b.v) || b.v == 0 || (a.atLeast && b.atLeast) {
		return ""
	}
	r := a.v / b.v
	digits := 2
	if r < 0.1 {
		digits = 3
	}
	scale := math.Pow(10, float64(digits))
	switch {
	case b.atLeast:
		return "< " + strconv.FormatFloat(math.Ceil(r*scale)/scale, 'f', digits, 64) + "x"
	case a.atLeast:
		return "> " + strconv.FormatFloat(math.Floor(r*scale)/scale, 'f', digits, 64) + "x"
	}
	return strconv.FormatFloat(r, 'f', digits, 64) + "x"
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
	if a == nil || b == nil {
		return ""
	}
	return ratioOf(a.get(key), b.get(key))
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
			row = append(row, r.get(d.key).cell())
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
		fmt.Sprintf("sync_cap=%v", e.syncCap),
		fmt.Sprintf("idle_periods=%d", e.idlePeriods),
		fmt.Sprintf("idle_period=%v", e.idlePeriod),
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
func table(key rowKey, rs []*result, e runEnv) string {
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
	fmt.Fprintf(&b, "\n== %s: %d Services x %d endpoints, K=%d changes, %d connects ==\n", key.label(), key.n, key.pods, e.k, e.connects)
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

// csvFile is one results-*.csv read back.
type csvFile struct {
	key  rowKey
	name string // results-5000x50.csv
	env  []string
	rows [][]string
}

// get is a contender's value of a metric, notMeasured when absent.
func (c csvFile) get(contender, key string) quantity {
	if cell := c.cell(contender, key); cell != "" {
		return parseQuantity(cell)
	}
	return notMeasured
}

// cell is the text of a column's row of key, "" when there is none.
func (c csvFile) cell(column, key string) string {
	col := slices.Index(c.rows[0], column)
	if col < 0 {
		return ""
	}
	for _, r := range c.rows[1:] {
		if r[0] == key && col < len(r) {
			return r[col]
		}
	}
	return ""
}

// value is get's number: NaN unless measured exactly.
func (c csvFile) value(contender, key string) float64 {
	if q := c.get(contender, key); !q.atLeast {
		return q.v
	}
	return math.NaN()
}

// envValue is the value of a "key=value" line of the file's header.
func (c csvFile) envValue(key string) string {
	for _, e := range c.env {
		if v, ok := strings.CutPrefix(e, key+"="); ok {
			return v
		}
	}
	return ""
}

// date is the day of the run, from the header.
func (c csvFile) date() string {
	d := c.envValue("date")
	if len(d) >= 10 {
		return d[:10]
	}
	return "undated"
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
		key, ok := parseCSVName(filepath.Base(p))
		if !ok {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		cf := csvFile{key: key, name: filepath.Base(p)}
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
	sort.Slice(out, func(i, j int) bool {
		if out[i].key.n != out[j].key.n {
			return out[i].key.n < out[j].key.n
		}
		return out[i].key.pods < out[j].key.pods
	})
	return out, nil
}
