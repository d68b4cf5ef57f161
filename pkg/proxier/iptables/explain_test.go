package iptables

import (
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func renderedTracer(t *testing.T) *Tracer {
	t.Helper()
	tr, err := TracerFor(flowspec.State(), flowspec.Config())
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// Every case of the flow spec, enumerated instead of sampled: each
// allowed endpoint gets exactly 1/n, nothing else is possible, and the
// probabilities add up to one.
func TestEnumerateGivesEachEndpointItsExactShareOnEveryCaseOfTheFlowSpec(t *testing.T) {
	tr := renderedTracer(t)
	for _, c := range slices.Concat(flowspec.Cases(), flowspec.ExternalCases(), flowspec.AffinityCases()) {
		t.Run(c.Name, func(t *testing.T) {
			out, err := tr.Enumerate(c.Packet)
			if err != nil {
				t.Fatal(err)
			}
			sum := 0.0
			for _, o := range out {
				sum += o.Probability
				if o.Verdict != c.Want {
					t.Errorf("outcome %+v with probability %v, want verdict %v only", o.Result, o.Probability, c.Want)
				}
				if c.Want != flowspec.DNAT {
					continue
				}
				if !slices.Contains(c.Endpoints, o.Endpoint) {
					t.Errorf("DNAT to %v, not one of %v", o.Endpoint, c.Endpoints)
				}
				if want := 1 / float64(len(c.Endpoints)); math.Abs(o.Probability-want) > 1e-9 {
					t.Errorf("%v: probability %.12f, want %.12f", o.Endpoint, o.Probability, want)
				}
				if wantMasq := c.Masquerade || o.Endpoint == c.HairpinEndpoint; o.Masquerade != wantMasq {
					t.Errorf("%v: masquerade %v, want %v", o.Endpoint, o.Masquerade, wantMasq)
				}
				if len(o.Path) == 0 || o.Path[len(o.Path)-1].Target() != "DNAT" && !slices.ContainsFunc(o.Path, func(s Step) bool { return s.Target() == "DNAT" }) {
					t.Errorf("%v: path %v has no DNAT rule", o.Endpoint, o.Path)
				}
			}
			if c.Want == flowspec.DNAT && len(out) != len(c.Endpoints) {
				t.Errorf("%d outcomes, want one per endpoint %v", len(out), c.Endpoints)
			}
			if math.Abs(sum-1) > 1e-12 {
				t.Errorf("probabilities add up to %v", sum)
			}
		})
	}
}

func TestEnumerateFollowsAnAffinityEntryTheKernelHolds(t *testing.T) {
	tr := renderedTracer(t)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tr.SetClock(func() time.Time { return now })
	vip := netip.AddrPortFrom(flowspec.StickyVIP, 80)
	pod2 := netip.AddrPortFrom(flowspec.Pod2, flowspec.EchoPort)
	list := sepChain(model.ServicePortKey{Namespace: "default", Name: "sticky", Port: "p", Protocol: model.TCP},
		model.Endpoint{IP: pod2.Addr(), Port: pod2.Port()})
	if ep, seconds, ok := tr.AffinityTarget(model.IPv4, list); !ok || ep != pod2 || seconds != 10800 {
		t.Fatalf("AffinityTarget(%s) = %v, %d, %v; want %v, 10800", list, ep, seconds, ok, pod2)
	}
	p := flowspec.Packet{Src: flowspec.Client, Dst: vip, Proto: model.TCP}

	tr.SetRecent(list, flowspec.Client, now.Add(-time.Hour))
	out := enumerate(t, tr, p)
	if len(out) != 1 || out[0].Endpoint != pod2 || out[0].Probability != 1 {
		t.Fatalf("a client in %s's list an hour ago: %+v; want %v for certain", list, out, pod2)
	}
	if !slices.ContainsFunc(out[0].Path, func(s Step) bool { return strings.Contains(s.String(), "--rcheck") }) {
		t.Errorf("the path does not show the recent check: %v", out[0].Path)
	}
	if again := enumerate(t, tr, p); len(again) != 1 {
		t.Errorf("Enumerate changed the lists it was given: %+v", again)
	}

	tr.SetRecent(list, flowspec.Client, now.Add(-4*time.Hour))
	if out := enumerate(t, tr, p); len(out) != 3 {
		t.Errorf("an entry older than the timeout still pins the client: %+v", out)
	}
}

func TestDriftNamesWhatTheKernelLacksOrHasBesideTheIntendedRules(t *testing.T) {
	intended := Render(flowspec.State(), flowspec.Config(), model.IPv4)
	save, err := SaveText(flowspec.State(), flowspec.Config(), model.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	saved := string(save)
	kernel := func(edit func(string) string) []byte { return []byte(edit(saved)) }
	same := func(s string) string { return s }
	if d, err := Drift(kernel(same), intended); err != nil || len(d) != 0 {
		t.Fatalf("the intended rules themselves: drift %q, %v", d, err)
	}
	webRule := "-A PROXYD-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:p cluster IP\" -m tcp --dport 80 -j "
	for _, tc := range []struct {
		name string
		edit func(string) string
		want string
	}{
		{"a Service's rule deleted by hand", func(s string) string {
			i := strings.Index(s, webRule)
			j := strings.Index(s[i:], "\n")
			return s[:i] + s[i+j+1:]
		}, "nat: rule missing: -A PROXYD-SERVICES -d 10.96.0.10/32"},
		{"a rule added to a proxyd chain", func(s string) string {
			return strings.Replace(s, webRule, "-A PROXYD-SERVICES -d 10.96.0.11/32 -j ACCEPT\n"+webRule, 1)
		}, "nat: rule not proxyd's: -A PROXYD-SERVICES -d 10.96.0.11/32 -j ACCEPT"},
		{"the jump from PREROUTING deleted", func(s string) string {
			return strings.Replace(s, "-A PREROUTING -m comment --comment \"proxyd service portals\" -j PROXYD-SERVICES\n", "", 1)
		}, "nat: the jump from PREROUTING is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Drift(kernel(tc.edit), intended)
			if err != nil {
				t.Fatal(err)
			}
			if len(d) != 1 || !strings.HasPrefix(d[0], tc.want) {
				t.Errorf("drift %q, want one line starting %q", d, tc.want)
			}
		})
	}
}

func enumerate(t *testing.T, tr *Tracer, p flowspec.Packet) []Outcome {
	t.Helper()
	out, err := tr.Enumerate(p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
