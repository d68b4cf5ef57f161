package main

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// series is one metric drawn against N, solid or dashed.
type series struct {
	key, name string
	dashed    bool
}

// vsNPlots are the plots against N, by file name: full sync, one-change
// latency (p50 solid, p99 dashed) and steady RSS, every contender on the
// same axes.
func vsNPlots(files []csvFile) map[string]string {
	return map[string]string{
		"sync-vs-n.svg": vsNPlot("full sync: start -> all Services in the kernel", "seconds (log)", files,
			[]series{{key: "full_sync_s", name: "full sync"}}),
		"latency-vs-n.svg": vsNPlot("one endpoint change: API write -> kernel", "ms (log)", files,
			[]series{{key: "prog_p50_ms", name: "p50"}, {key: "prog_p99_ms", name: "p99", dashed: true}}),
		"rss-vs-n.svg": vsNPlot("steady RSS after the changes", "MiB (log)", files,
			[]series{{key: "steady_rss_mib", name: "steady RSS"}}),
	}
}

// vsNPlot draws the metrics of ss against N, log-log. The rows with 10
// endpoints per Service are joined by lines; any other row (5k × 50) is an
// open diamond at its N, labelled, joined to nothing. A full sync stopped
// at the cap is an open triangle at the cap.
func vsNPlot(title, ylabel string, files []csvFile, ss []series) string {
	s := newSVG(title)
	seen := map[string]bool{}
	var names []string
	var ns, vals []float64
	for _, f := range files {
		for _, c := range f.contenders() {
			for _, se := range ss {
				q := f.get(c, se.key)
				if math.IsNaN(q.v) || q.v <= 0 {
					continue
				}
				ns, vals = append(ns, float64(f.key.n)), append(vals, q.v)
				if !seen[c] {
					seen[c] = true
					names = append(names, c)
				}
			}
		}
	}
	// N is padded by a factor of two each side, so no point sits on the frame.
	x, y := logAxis(ns), logAxis(vals)
	if len(ns) > 0 {
		x = axis{lo: slices.Min(ns) / 2, hi: slices.Max(ns) * 2, log: true}
	}
	var odd []string
	capped := false
	s.yAxis(y, ylabel)
	for _, t := range x.ticks() {
		px := marginL + innerW()*x.frac(t)
		fmt.Fprintf(&s.b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.0f" stroke="#eee"/>`+"\n", px, px, marginT, marginT+innerH())
		s.text(px, marginT+innerH()+16, "middle", fmtVal(t), "")
	}
	s.text(marginL+innerW()/2, plotH-12, "middle", "Services (log)", "")
	labelled := map[rowKey]bool{}
	for _, c := range names {
		for _, se := range ss {
			var line []string
			for _, f := range files {
				q := f.get(c, se.key)
				if math.IsNaN(q.v) || q.v <= 0 {
					continue
				}
				px, py := marginL+innerW()*x.frac(float64(f.key.n)), marginT+innerH()*(1-y.frac(q.v))
				tip := fmt.Sprintf("%s %s, %s: %s", c, se.name, f.key.label(), q.cell())
				capped = capped || q.atLeast
				switch {
				case q.atLeast:
					s.marker("triangle", px, py, c, tip)
				case f.key.pods != defaultPods && se.dashed:
					s.marker("dashed-diamond", px, py, c, tip)
				case f.key.pods != defaultPods:
					s.marker("diamond", px, py, c, tip)
				case se.dashed:
					s.marker("open", px, py, c, tip)
				default:
					s.marker("dot", px, py, c, tip)
				}
				if f.key.pods != defaultPods && !labelled[f.key] {
					labelled[f.key] = true
					odd = append(odd, f.key.label())
					s.text(px, marginT+innerH()-6, "middle", f.key.label(), `fill="#555" font-size="11"`)
				}
				if f.key.pods == defaultPods {
					line = append(line, fmt.Sprintf("%.1f,%.1f", px, py))
				}
			}
			if len(line) > 1 {
				dash := ""
				if se.dashed {
					dash = ` stroke-dasharray="6 4"`
				}
				fmt.Fprintf(&s.b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n",
					strings.Join(line, " "), color(c), dash)
			}
		}
	}
	s.legend(names)
	y0 := s.markerKey(len(names), ss, odd, capped)
	s.runDates(y0, files)
	return s.String()
}

// marker draws one point: a dot, an open circle, an open diamond (dashed
// for a dashed series) or an open triangle pointing up, with tip as its
// tooltip.
func (s *svgDoc) marker(kind string, x, y float64, contender, tip string) {
	col := color(contender)
	var shape string
	switch kind {
	case "dot":
		shape = fmt.Sprintf(`<circle cx="%.1f" cy="%.1f" r="4" fill="%s">`, x, y, col)
	case "open":
		shape = fmt.Sprintf(`<circle cx="%.1f" cy="%.1f" r="4" fill="white" stroke="%s" stroke-width="2">`, x, y, col)
	case "diamond", "dashed-diamond":
		dash := ""
		if kind == "dashed-diamond" {
			dash = ` stroke-dasharray="3 2"`
		}
		shape = fmt.Sprintf(`<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="white" stroke="%s" stroke-width="2"%s>`,
			x, y-7, x+7, y, x, y+7, x-7, y, col, dash)
	case "triangle":
		shape = fmt.Sprintf(`<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="white" stroke="%s" stroke-width="2">`,
			x, y-8, x+7, y+5, x-7, y+5, col)
	}
	fmt.Fprintf(&s.b, "%s<title>%s</title>%s\n", shape, html.EscapeString(tip), closing(shape))
}

func closing(shape string) string {
	if strings.HasPrefix(shape, "<circle") {
		return "</circle>"
	}
	return "</polygon>"
}

// markerKey explains, below the legend, the line styles and the markers
// of the rows off the lines (odd) and of capped full syncs.
func (s *svgDoc) markerKey(after int, ss []series, odd []string, capped bool) (bottom float64) {
	x := float64(plotW - marginR + 15)
	y := float64(marginT + 10 + 20*after + 14)
	if len(ss) > 1 {
		for _, se := range ss {
			dash := ""
			if se.dashed {
				dash = ` stroke-dasharray="6 4"`
			}
			fmt.Fprintf(&s.b, `<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="#333" stroke-width="2"%s/>`+"\n", x, x+14, y-4, y-4, dash)
			s.text(x+18, y, "start", se.name, "")
			y += 18
		}
	}
	for _, l := range odd {
		s.marker("diamond", x+7, y-4, "", "")
		s.text(x+18, y, "start", l, "")
		y += 18
	}
	if capped {
		s.marker("triangle", x+7, y-4, "", "")
		s.text(x+18, y, "start", "stopped at the cap", "")
		y += 18
	}
	return y
}

// runDates lists below y the day each row was measured: the points of one
// plot may come from runs of different days and builds.
func (s *svgDoc) runDates(y float64, files []csvFile) {
	x := float64(plotW - marginR + 15)
	y += 10
	s.text(x, y, "start", "measured on", `fill="#555" font-size="11"`)
	for _, f := range files {
		y += 15
		s.text(x, y, "start", f.key.label()+": "+f.date(), `fill="#555" font-size="11"`)
	}
}
