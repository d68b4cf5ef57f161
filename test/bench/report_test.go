package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A 10k × 10 row and a 5k × 50 row whose kube-proxy was stopped at the
// cap, written as the harness writes them and read back by -report-only.
func TestReportOnlyRedrawsTargetsAndPlotsFromTheCSVs(t *testing.T) {
	dir := t.TempDir()
	write := func(key rowKey, pd, kp *result) {
		t.Helper()
		env := runEnv{n: key.n, pods: key.pods, syncCap: 20 * time.Minute, idlePeriods: 5, when: time.Date(2026, 12, 8, 2, 0, 0, 0, time.UTC)}
		if err := writeCSV(filepath.Join(dir, key.csvName()), []*result{pd, kp}, env); err != nil {
			t.Fatal(err)
		}
	}
	pd, kp := newResult("proxyd-nftables"), newResult("kube-proxy-nftables")
	pd.v["full_sync_s"], kp.v["full_sync_s"] = 2, 40
	pd.v["prog_p50_ms"], pd.v["prog_p99_ms"] = 8, 45
	write(k10, pd, kp)
	pd5, kp5 := newResult("proxyd-nftables"), newResult("kube-proxy-nftables")
	pd5.v["full_sync_s"], pd5.v["prog_p50_ms"] = 12, 9
	kp5.capped, kp5.status = 20*time.Minute, "capped: full sync not done: 10 of 5000 Services programmed after 20m0s; stopped"
	write(k5x, pd5, kp5)
	readme := filepath.Join(dir, "TOP.md")
	if err := os.WriteFile(readme, []byte("intro\n"+beginMarker+"\nstale\n"+endMarker+"\noutro\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeReport(dir, readme); err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	top := read("TOP.md")
	for _, want := range []string{
		"| 10k × 10 nftables | full sync vs kube-proxy | ≤ 0.1× | 2 s vs 40 s = 0.050× | met | results-10000.csv, 2026-12-08 |",
		"| 10k × 10 nftables | one endpoint change API→kernel p50 / p99 | ≤ 10 / ≤ 30 ms | 8 ms; 45 ms | missed |",
		"| 5k × 50 (#135639) nftables | full sync | ≤ 20 s and ≤ 0.1× kube-proxy | 12 s (kube-proxy > 20 min); 12 s vs > 20 min = < 0.010× | met | results-5000x50.csv, 2026-12-08 |",
		"| 5k × 50 (#135639) nftables | one change p50 | ≤ 15 ms | 9 ms | met |",
		"| 30k × 10 nftables | one change p50 | ≤ 15 ms (flat in N) | — | not measured | no results-30000.csv |",
		"intro\n" + beginMarker + "\n| workload |",
		endMarker + "\noutro\n",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("README section lacks %q:\n%s", want, top)
		}
	}
	if strings.Contains(top, "stale") {
		t.Error("the old section between the markers is still there")
	}
	if got := read("targets.md"); !strings.Contains(got, "results-5000x50.csv") {
		t.Errorf("targets.md does not name its source:\n%s", got)
	}
	sync := read("sync-vs-n.svg")
	for _, want := range []string{"5k × 50", "kube-proxy-nftables full sync, 5k × 50: &gt; 20 min", "stopped at the cap"} {
		if !strings.Contains(sync, want) {
			t.Errorf("sync-vs-n.svg lacks %q", want)
		}
	}
	for _, name := range []string{"latency-vs-n.svg", "rss-vs-n.svg", "latency-5000x50.svg", "connect-10000.svg", "README.md"} {
		read(name)
	}
}
