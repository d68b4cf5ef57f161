package main

// Hand-written SVG plots: the module has no plotting library and test/bench
// may not add one to go.mod.

import (
	"fmt"
	"html"
	"math"
	"strings"
)

var palette = map[string]string{
	"proxyd-nftables":     "#1f77b4",
	"proxyd-iptables":     "#17becf",
	"kube-proxy-nftables": "#d62728",
	"kube-proxy-iptables": "#ff7f0e",
}

func color(name string) string {
	if c, ok := palette[name]; ok {
		return c
	}
	return "#7f7f7f"
}

const (
	plotW, plotH                       = 720, 420
	marginL, marginR, marginT, marginB = 70, 190, 40, 50
)

type axis struct {
	lo, hi float64
	log    bool
}

func (a axis) frac(v float64) float64 {
	if a.log {
		return (math.Log10(v) - math.Log10(a.lo)) / (math.Log10(a.hi) - math.Log10(a.lo))
	}
	return (v - a.lo) / (a.hi - a.lo)
}

// ticks returns tick values: decades for log axes, ~5 round steps else.
func (a axis) ticks() []float64 {
	var out []float64
	if a.log {
		for e := math.Floor(math.Log10(a.lo)); e <= math.Ceil(math.Log10(a.hi)); e++ {
			for _, m := range []float64{1, 2, 5} {
				v := m * math.Pow(10, e)
				if v >= a.lo*0.999 && v <= a.hi*1.001 {
					out = append(out, v)
				}
			}
		}
		return out
	}
	step := math.Pow(10, math.Floor(math.Log10((a.hi-a.lo)/5)))
	for (a.hi-a.lo)/step > 8 {
		step *= 2
	}
	for v := math.Ceil(a.lo/step) * step; v <= a.hi*1.0001; v += step {
		out = append(out, v)
	}
	return out
}

// logAxis spans the values with a decade-aligned margin.
func logAxis(vals []float64) axis {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range vals {
		if v > 0 && !math.IsNaN(v) {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if math.IsInf(lo, 1) {
		return axis{lo: 1, hi: 10, log: true}
	}
	return axis{lo: math.Pow(10, math.Floor(math.Log10(lo)+1e-9)), hi: math.Pow(10, math.Ceil(math.Log10(hi)-1e-9)), log: true}
}

type svgDoc struct{ b strings.Builder }

func newSVG(title string) *svgDoc {
	s := &svgDoc{}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH)
	fmt.Fprintf(&s.b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&s.b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", marginL, html.EscapeString(title))
	return s
}

func (s *svgDoc) text(x, y float64, anchor, txt string, extra string) {
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" text-anchor="%s" %s>%s</text>`+"\n", x, y, anchor, extra, html.EscapeString(txt))
}

func (s *svgDoc) String() string { return s.b.String() + "</svg>\n" }

func innerW() float64 { return plotW - marginL - marginR }
func innerH() float64 { return plotH - marginT - marginB }

// yAxis draws the frame, the y ticks with grid lines and the y label.
func (s *svgDoc) yAxis(y axis, label string) {
	fmt.Fprintf(&s.b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", marginL, marginT, innerW(), innerH())
	for _, t := range y.ticks() {
		py := marginT + innerH()*(1-y.frac(t))
		fmt.Fprintf(&s.b, `<line x1="%d" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", marginL, marginL+innerW(), py, py)
		s.text(marginL-6, py+4, "end", fmtVal(t), "")
	}
	s.text(16, marginT+innerH()/2, "middle", label, fmt.Sprintf(`transform="rotate(-90 16 %.0f)"`, marginT+innerH()/2))
}

func (s *svgDoc) legend(names []string) {
	for i, n := range names {
		y := float64(marginT + 10 + 20*i)
		x := float64(plotW - marginR + 15)
		fmt.Fprintf(&s.b, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/>`+"\n", x, y-10, color(n))
		s.text(x+18, y, "start", n, "")
	}
}

// barPlot is two bars (k1 solid, k2 light) per contender.
func barPlot(title string, f csvFile, k1, k2 string, logY bool) string {
	s := newSVG(title)
	names := f.contenders()
	var vals []float64
	for _, c := range names {
		vals = append(vals, f.value(c, k1), f.value(c, k2))
	}
	var y axis
	if logY {
		y = logAxis(vals)
	} else {
		hi := 0.0
		for _, v := range vals {
			if !math.IsNaN(v) {
				hi = math.Max(hi, v)
			}
		}
		if hi == 0 {
			hi = 1
		}
		y = axis{lo: 0, hi: hi * 1.15}
	}
	label := "ms"
	if logY {
		label = "ms (log)"
	}
	s.yAxis(y, label)
	slot := innerW() / float64(max(1, len(names)))
	bw := slot * 0.3
	for i, c := range names {
		x0 := marginL + slot*float64(i) + slot*0.18
		for j, k := range []string{k1, k2} {
			v := f.value(c, k)
			bx := x0 + float64(j)*(bw+4)
			if math.IsNaN(v) {
				s.text(bx+bw/2, marginT+innerH()-6, "middle", "n/a", `fill="#999"`)
				continue
			}
			fr := y.frac(math.Max(v, y.lo))
			if logY && v <= y.lo {
				fr = 0
			}
			h := innerH() * math.Max(0, math.Min(1, fr))
			op := "1"
			if j == 1 {
				op = "0.45"
			}
			fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="%s"><title>%s %s=%s</title></rect>`+"\n",
				bx, marginT+innerH()-h, bw, h, color(c), op, c, k, fmtVal(v))
			s.text(bx+bw/2, marginT+innerH()-h-4, "middle", fmtVal(v), `font-size="10"`)
		}
		s.text(x0+bw+2, marginT+innerH()+16, "middle", c, `font-size="11"`)
	}
	s.text(marginL+innerW()/2, plotH-12, "middle", "solid: "+k1+"   light: "+k2, "")
	s.legend(names)
	return s.String()
}
