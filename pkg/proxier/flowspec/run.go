package flowspec

import (
	"fmt"
	"hash/fnv"
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

// RunPolicy checks PolicyCases against tracer, which must trace the rules
// rendered for PolicyState.
func RunPolicy(t *testing.T, tracer Tracer) {
	t.Helper()
	run(t, tracer, PolicyCases())
}

// Failure is one case the tracer did not satisfy.
type Failure struct {
	Case string // the case's name
	Msg  string // what went wrong
}

func (f Failure) String() string { return f.Case + ": " + f.Msg }

// Check runs cases against tracer and returns the ones it fails, in
// order; none means the tracer satisfies them all. Run and its siblings
// are Check with each case as a subtest; Check itself is for tests that
// expect failures (a deliberately broken rule set must fail the spec).
func Check(tracer Tracer, cases []Case) []Failure {
	var out []Failure
	for _, c := range cases {
		if msg := checkCase(tracer, c); msg != "" {
			out = append(out, Failure{Case: c.Name, Msg: msg})
		}
	}
	return out
}

func run(t *testing.T, tracer Tracer, cases []Case) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if msg := checkCase(tracer, c); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

// caseRand is the random source of one case, seeded by its name so that
// runs repeat and a case draws the same numbers whichever cases ran (or
// failed) before it.
func caseRand(name string) func(n uint32) uint32 {
	h := fnv.New64a()
	h.Write([]byte(name))
	rng := rand.New(rand.NewPCG(1, h.Sum64()))
	return func(n uint32) uint32 { return rng.Uint32N(n) }
}

// checkCase traces c (Samples times for a DNAT case) and says what is
// wrong, or "" when nothing is.
func checkCase(tracer Tracer, c Case) string {
	rnd := caseRand(c.Name)
	seen := map[netip.AddrPort]int{}
	n := 1
	if c.Want == DNAT {
		n = Samples
	}
	for range n {
		r := tracer.Trace(c.Packet, rnd)
		if r.Err != nil {
			return fmt.Sprintf("the tracer cannot follow the rules: %v (packet %+v)", r.Err, c.Packet)
		}
		if r.Verdict != c.Want {
			return fmt.Sprintf("verdict %v, want %v (packet %+v)", r.Verdict, c.Want, c.Packet)
		}
		if r.Verdict != DNAT {
			return ""
		}
		if !slices.Contains(c.Endpoints, r.Endpoint) {
			return fmt.Sprintf("DNAT to %v, want one of %v", r.Endpoint, c.Endpoints)
		}
		wantMasq := c.Masquerade || r.Endpoint == c.HairpinEndpoint
		if r.Masquerade != wantMasq {
			return fmt.Sprintf("to %v: masquerade %v, want %v", r.Endpoint, r.Masquerade, wantMasq)
		}
		seen[r.Endpoint]++
	}
	if c.Sticky {
		if len(seen) != 1 {
			return fmt.Sprintf("affinity broken: one client reached %v", seen)
		}
		return ""
	}
	counts := make([]int, 0, len(c.Endpoints))
	for _, e := range c.Endpoints {
		if seen[e] == 0 {
			return fmt.Sprintf("endpoint %v never chosen in %d packets: %v", e, n, seen)
		}
		counts = append(counts, seen[e])
	}
	// A wrong probability (1/n where 1/(n-i) is due) gives p far below
	// 1e-9 at Samples draws; 0.001 keeps a fair draw from failing when
	// dozens of cases run in each of three backends.
	if p := ChiSquareUniformP(counts); p < 0.001 {
		return fmt.Sprintf("distribution %v rejected as uniform: chi-square p=%.4f", seen, p)
	}
	return ""
}

// ChiSquareUniformP returns the p-value of Pearson's chi-square test that
// counts come from a uniform distribution.
func ChiSquareUniformP(counts []int) float64 {
	probs := make([]float64, len(counts))
	for i := range probs {
		probs[i] = 1 / float64(len(counts))
	}
	return ChiSquareP(counts, probs)
}

// ChiSquareP returns the p-value of Pearson's chi-square goodness-of-fit
// test that counts come from the distribution probs (which add up to 1;
// a count where probs says 0 rejects outright).
func ChiSquareP(counts []int, probs []float64) float64 {
	k := len(counts)
	if k < 2 || len(probs) != k {
		return 1
	}
	total := 0
	for _, c := range counts {
		total += c
	}
	x2 := 0.0
	for i, c := range counts {
		exp := float64(total) * probs[i]
		if exp == 0 {
			if c > 0 {
				return 0
			}
			continue
		}
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
func WantFailure(t *testing.T, tracer Tracer, caseName string) Failure {
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
	failures := Check(tracer, cases)
	if len(failures) == 0 {
		t.Fatalf("the broken rules still pass %q", caseName)
	}
	t.Logf("as it should, %v", failures[0])
	return failures[0]
}

// All is every case of the spec that runs on flowspec.State: Cases,
// ExternalCases and AffinityCases.
func All() []Case { return slices.Concat(Cases(), ExternalCases(), AffinityCases()) }
