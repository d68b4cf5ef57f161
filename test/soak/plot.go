package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// plot draws RSS (MB) and goroutines over time, one panel each, as SVG.
func (r *result) plot(title string) string {
	const w, h, left, right, top, panelH, gap = 760.0, 420.0, 70.0, 20.0, 40.0, 150.0, 50.0
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="22" text-anchor="middle" font-size="15">%s: proxyd under churn</text>`+"\n", w/2, title)
	xs := r.series(func(s sample) float64 { return s.at.Minutes() })
	xmax := 1.0
	if len(xs) > 0 {
		xmax = max(xs[len(xs)-1], 1e-9)
	}
	panels := []struct {
		label string
		ys    []float64
		color string
	}{
		{"RSS (MB)", r.series(func(s sample) float64 { return s.rssMB }), "#1f77b4"},
		{"goroutines", r.series(func(s sample) float64 { return s.goroutines }), "#d62728"},
	}
	for i, p := range panels {
		y0 := top + float64(i)*(panelH+gap)
		ymax := 1.0
		if len(p.ys) > 0 {
			ymax = niceCeil(slices.Max(p.ys) * 1.1)
		}
		x := func(v float64) float64 { return left + v/xmax*(w-left-right) }
		y := func(v float64) float64 { return y0 + panelH - v/ymax*panelH }
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`+"\n", left, y0, w-left-right, panelH)
		for t := 0; t <= 4; t++ {
			v := ymax * float64(t) / 4
			fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%g</text><line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#eee"/>`+"\n",
				left-6, y(v)+4, math.Round(v*10)/10, left, w-right, y(v), y(v))
		}
		fmt.Fprintf(&b, `<text x="16" y="%.0f" transform="rotate(-90 16 %.0f)" text-anchor="middle">%s</text>`+"\n", y0+panelH/2, y0+panelH/2, p.label)
		var pts []string
		for j, v := range p.ys {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(xs[j]), y(v)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", p.color, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">minutes</text>`+"\n", (left+w-right)/2, y0+panelH+30)
		for t := 0; t <= 4; t++ {
			v := xmax * float64(t) / 4
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%g</text>`+"\n", x(v), y0+panelH+15, math.Round(v*100)/100)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
