package flowspec

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Samples is how many times a DNAT case is traced: enough that an endpoint
// the rules can reach is seen with overwhelming probability.
const Samples = 3000

// Run checks every case of Cases against tracer.
func Run(t *testing.T, tracer Tracer) {
	t.Helper()
	run(t, tracer, Cases())
}

// RunAffinity checks every case of AffinityCases against tracer.
func RunAffinity(t *testing.T, tracer Tracer) {
	t.Helper()
	run(t, tracer, AffinityCases())
}

// RunExternal checks every case of ExternalCases against tracer.
func RunExternal(t *testing.T, tracer Tracer) {
	t.Helper()
	run(t, tracer, ExternalCases())
}

func run(t *testing.T, tracer Tracer, cases []Case) {
	t.Helper()
	rnd := newRnd()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if err := check(tracer, c, rnd); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Failures checks cases against tracer like Run and returns one error per
// failing case, named after it, instead of failing a test: what a test
// needs to show that a deliberately broken ruleset fails the spec.
func Failures(tracer Tracer, cases []Case) []error {
	rnd := newRnd()
	var out []error
	for _, c := range cases {
		if err := check(tracer, c, rnd); err != nil {
			out = append(out, fmt.Errorf("%s: %w", c.Name, err))
		}
	}
	return out
}

// All is every case of the spec: Cases, ExternalCases and AffinityCases.
func All() []Case { return slices.Concat(Cases(), ExternalCases(), AffinityCases()) }

func newRnd() func(n uint32) uint32 {
	rng := rand.New(rand.NewPCG(1, 2))
	return func(n uint32) uint32 { return rng.Uint32N(n) }
}

// check traces c's packet (Samples times for a DNAT case) and reports the
// first way the results miss the case.
func check(tracer Tracer, c Case, rnd func(n uint32) uint32) error {
	seen := map[netip.AddrPort]int{}
	n := 1
	if c.Want == DNAT {
		n = Samples
	}
	for range n {
		r := tracer.Trace(c.Packet, rnd)
		if r.Err != nil {
			return fmt.Errorf("the tracer failed: %w", r.Err)
		}
		if r.Verdict != c.Want {
			return fmt.Errorf("verdict %v, want %v (packet %+v)", r.Verdict, c.Want, c.Packet)
		}
		if r.Verdict != DNAT {
			return nil
		}
		if !slices.Contains(c.Endpoints, r.Endpoint) {
			return fmt.Errorf("DNAT to %v, want one of %v", r.Endpoint, c.Endpoints)
		}
		wantMasq := c.Masquerade || r.Endpoint == c.HairpinEndpoint
		if r.Masquerade != wantMasq {
			return fmt.Errorf("to %v: masquerade %v, want %v", r.Endpoint, r.Masquerade, wantMasq)
		}
		seen[r.Endpoint]++
	}
	if c.Sticky {
		if len(seen) != 1 {
			return fmt.Errorf("affinity broken: one client reached %v", seen)
		}
		return nil
	}
	counts := make([]int, 0, len(c.Endpoints))
	for _, e := range c.Endpoints {
		if seen[e] == 0 {
			return fmt.Errorf("endpoint %v never chosen in %d packets: %v", e, n, seen)
		}
		counts = append(counts, seen[e])
	}
	if p := ChiSquareUniformP(counts); p < 0.01 {
		return fmt.Errorf("distribution %v rejected as uniform: chi-square p=%.4f", seen, p)
	}
	return nil
}

// ChiSquareUniformP returns the p-value of Pearson's chi-square test that
// counts come from a uniform distribution.
func ChiSquareUniformP(counts []int) float64 {
	k := len(counts)
	if k < 2 {
		return 1
	}
	total := 0
	for _, c := range counts {
		total += c
	}
	exp := float64(total) / float64(k)
	x2 := 0.0
	for _, c := range counts {
		d := float64(c) - exp
		x2 += d * d / exp
	}
	return upperGammaQ(float64(k-1)/2, x2/2)
}

// upperGammaQ is the regularised upper incomplete gamma function Q(a, x),
// by series for x < a+1 and continued fraction otherwise.
func upperGammaQ(a, x float64) float64 {
	if x <= 0 {
		return 1
	}
	lg, _ := math.Lgamma(a)
	if x < a+1 {
		sum, term := 1/a, 1/a
		for n := 1; n < 500; n++ {
			term *= x / (a + float64(n))
			sum += term
			if term < sum*1e-15 {
				break
			}
		}
		return 1 - sum*math.Exp(-x+a*math.Log(x)-lg)
	}
	b := x + 1 - a
	c := 1 / 1e-300
	d := 1 / b
	h := d
	for i := 1; i < 500; i++ {
		an := -float64(i) * (float64(i) - a)
		b += 2
		d = an*d + b
		if math.Abs(d) < 1e-300 {
			d = 1e-300
		}
		c = b + an/c
		if math.Abs(c) < 1e-300 {
			c = 1e-300
		}
		d = 1 / d
		del := d * c
		h *= del
		if math.Abs(del-1) < 1e-15 {
			break
		}
	}
	return math.Exp(-x+a*math.Log(x)-lg) * h
}

// WantFailure checks that tracer, over deliberately broken rules, fails
// the spec's case named caseName (a prefix of its name is enough) and
// returns that failure. (Each mode's own tests show that the unbroken
// rules pass every case.)
func WantFailure(t *testing.T, tracer Tracer, caseName string) error {
	t.Helper()
	var cases []Case
	for _, c := range All() {
		if strings.HasPrefix(c.Name, caseName) {
			cases = append(cases, c)
		}
	}
	if len(cases) == 0 {
		t.Fatalf("the spec has no case %q", caseName)
	}
	errs := Failures(tracer, cases)
	if len(errs) == 0 {
		t.Fatalf("the broken rules still pass %q", caseName)
	}
	t.Logf("as it should, %v", errs[0])
	return errs[0]
}
