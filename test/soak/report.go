package main

import (
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// write saves the samples (<label>.csv), their plot (<label>.svg, and
// .png when rsvg-convert exists) and the summary (<label>.md) into o.out.
func (r *result) write(o options) error {
	base := filepath.Join(o.out, o.label)
	f, err := os.Create(base + ".csv")
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"seconds", "rss_mb", "goroutines", "probes", "failed_probes", "churn_writes", "syncs", "drift_repairs"})
	for _, s := range r.samples {
		_ = w.Write([]string{fmt.Sprintf("%.1f", s.at.Seconds()), fmt.Sprintf("%.2f", s.rssMB), fmt.Sprintf("%.0f", s.goroutines),
			strconv.Itoa(s.probes), strconv.Itoa(s.failed), strconv.Itoa(s.churned), fmt.Sprintf("%.0f", s.syncs), fmt.Sprintf("%.0f", s.driftRepairs)})
	}
	w.Flush()
	if err := errorsJoin(w.Error(), f.Close()); err != nil {
		return err
	}
	if err := os.WriteFile(base+".svg", []byte(r.plot(o.label)), 0o644); err != nil {
		return err
	}
	if tool, err := exec.LookPath("rsvg-convert"); err == nil {
		if out, err := exec.Command(tool, "-o", base+".png", base+".svg").CombinedOutput(); err != nil {
			return fmt.Errorf("rsvg-convert: %v: %s", err, out)
		}
	}
	return os.WriteFile(base+".md", []byte(r.summary(o)), 0o644)
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// thirds returns the median of the first and of the last third of the
// samples' values: flat when they are close.
func thirds(v []float64) (first, last float64) {
	if len(v) < 3 {
		return 0, 0
	}
	median := func(x []float64) float64 {
		x = slices.Clone(x)
		slices.Sort(x)
		return x[len(x)/2]
	}
	n := len(v) / 3
	return median(v[:n]), median(v[len(v)-n:])
}

func (r *result) series(f func(sample) float64) []float64 {
	out := make([]float64, len(r.samples))
	for i, s := range r.samples {
		out[i] = f(s)
	}
	return out
}

// summary is the run in a few lines of Markdown.
func (r *result) summary(o options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Soak %s (%s UTC)\n\n", o.label, r.start.Format("2006-01-02 15:04"))
	fmt.Fprintf(&b, "`go run ./test/soak -duration %s -rate %g -pool %d -probe-every %s -sample %s` — proxyd nftables mode, lab with %d echo Pods; ran %s.\n\n",
		o.duration, o.rate, o.pool, o.probeEvery, o.sample, o.pods, r.ran.Round(time.Second))
	c := r.churn
	fmt.Fprintf(&b, "- Churn: %d writes (%.1f/s; API errors %d)", c.ops, float64(c.ops)/max(r.ran.Seconds(), 1), c.errs)
	kinds := make([]string, 0, len(c.byKind))
	for k, n := range c.byKind {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(kinds)
	fmt.Fprintf(&b, ": %s.\n", strings.Join(kinds, ", "))
	if c.lastErr != nil {
		fmt.Fprintf(&b, "  Last API error: %v\n", c.lastErr)
	}
	fmt.Fprintf(&b, "- Connections to the untouched Service every %s: %d, failed %d.\n", o.probeEvery, r.probes, r.failed)
	for _, s := range r.failSamples {
		fmt.Fprintf(&b, "  - %s\n", s)
	}
	rss := r.series(func(s sample) float64 { return s.rssMB })
	gor := r.series(func(s sample) float64 { return s.goroutines })
	if len(rss) > 0 {
		f1, l1 := thirds(rss)
		f2, l2 := thirds(gor)
		fmt.Fprintf(&b, "- proxyd RSS: %.1f MB at the first sample, max %.1f MB, last %.1f MB; median of the first third %.1f MB, of the last third %.1f MB.\n",
			rss[0], slices.Max(rss), rss[len(rss)-1], f1, l1)
		fmt.Fprintf(&b, "- Goroutines: first %.0f, max %.0f, last %.0f; medians of the first and last third %.0f and %.0f.\n",
			gor[0], slices.Max(gor), gor[len(gor)-1], f2, l2)
		last := r.samples[len(r.samples)-1]
		fmt.Fprintf(&b, "- Syncs: %.0f; drift repairs: %.0f.\n", last.syncs, last.driftRepairs)
	}
	switch {
	case r.proxydExited != "":
		fmt.Fprintf(&b, "- proxyd exited during the run: %s.\n", r.proxydExited)
	case !r.driftChecked:
		b.WriteString("- Kernel vs model: not compared.\n")
	case len(r.drift) == 0:
		fmt.Fprintf(&b, "- Kernel vs model after the churn: the nftables tables equal those rendered from the API's objects, for all %d Services (%d service ports). (Control: without the untouched Service in the model the same comparison finds %d differences.)\n", r.services, r.servicePts, r.controlDiffs)
	default:
		fmt.Fprintf(&b, "- Kernel vs model after the churn: %d differences over %d Services:\n", len(r.drift), r.services)
		for i, d := range r.drift {
			if i == 20 {
				fmt.Fprintf(&b, "  - … %d more\n", len(r.drift)-20)
				break
			}
			fmt.Fprintf(&b, "  - %s\n", d)
		}
	}
	fmt.Fprintf(&b, "\n![RSS and goroutines](%s.svg)\n", o.label)
	return b.String()
}
