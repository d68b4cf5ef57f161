package explain

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/proxyd/proxyd/internal/golden"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/iptables"
)

// hz and jiffiesNow are the fake kernel clock the tests write: HZ 250,
// 1000 s after boot.
const (
	hz         = 250
	jiffiesNow = 1<<32 + (1000-300)*hz
)

// renderedKernel is an iptables dataplane whose "kernel" is what
// iptables-save prints after the Proxier programmed the flow spec's State,
// with recent lists and a kernel clock in files of a temporary /proc.
func renderedKernel(t *testing.T, lists map[string]string) *IPTables {
	t.Helper()
	dir := t.TempDir()
	recent := filepath.Join(dir, "xt_recent")
	if err := os.Mkdir(recent, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range lists {
		if err := os.WriteFile(filepath.Join(recent, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return &IPTables{Variant: iptables.VariantNFT, Config: flowspec.Config(), Local: flowspec.NodeLocal,
		Save: func(_ context.Context, fam model.IPFamily) ([]byte, error) {
			return iptables.SaveText(flowspec.State(), flowspec.Config(), fam)
		},
		RecentDir: recent,
		TimerList: write("timer_list", fmt.Sprintf("Timer List Version: v0.10\nnow at 1 nsecs\n\njiffies: %d\n", uint64(jiffiesNow))),
		Uptime:    write("uptime", "1000.00 1800.00\n"),
	}
}

func explainer(d Dataplane) *Explainer {
	return &Explainer{Dataplane: d, State: flowspec.State, ReadBy: "test",
		Now: func() time.Time { return time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC) }}
}

func TestAReportOverTheRenderedRulesNamesServiceRuleOutcomesAndNoDrift(t *testing.T) {
	x := explainer(renderedKernel(t, nil))
	q := Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP}
	r, err := x.Explain(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "web-from-client.txt", text.String())

	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(*r, back, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); d != "" {
		t.Errorf("the JSON does not carry the report (-sent +received):\n%s", d)
	}
}

func TestTheVerdictsOfTheFlowSpecReadFromTheReport(t *testing.T) {
	x := explainer(renderedKernel(t, nil))
	vip := netip.AddrPortFrom
	for _, tc := range []struct {
		name                 string
		q                    Query
		verdict, masq, kind  string
		service, whyFragment string
	}{
		{"a NodePort from outside is masqueraded for external policy Cluster",
			Query{Src: flowspec.ExternalClient, Dst: vip(flowspec.NodeIP, 30080), Proto: model.TCP}, "dnat", "yes", "NodePort", "np", "externalTrafficPolicy Cluster"},
		{"an empty Service rejects, and the rule that rejects names it",
			Query{Src: flowspec.Client, Dst: vip(flowspec.EmptyVIP, 80), Proto: model.TCP}, "reject", "", "ClusterIP", "empty", ""},
		{"a Pod address is untouched",
			Query{Src: flowspec.Client, Dst: vip(flowspec.Pod1, 8080), Proto: model.TCP}, "untouched", "", "", "", ""},
		{"a Pod reaching itself is masqueraded only through its own endpoint",
			Query{Src: flowspec.Pod1, Dst: vip(flowspec.WebVIP, 80), Proto: model.TCP}, "dnat", "for some endpoints", "ClusterIP", "web", "hairpin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := x.Explain(context.Background(), tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if r.Verdict != tc.verdict {
				t.Errorf("verdict %q, want %q", r.Verdict, tc.verdict)
			}
			if tc.masq != "" && (r.Masquerade.Decision != tc.masq || !strings.Contains(strings.Join(r.Masquerade.Why, " "), tc.whyFragment)) {
				t.Errorf("masquerade %+v, want %q because of %q", r.Masquerade, tc.masq, tc.whyFragment)
			}
			switch {
			case tc.service == "" && r.Service != nil:
				t.Errorf("service %v, want none", r.Service)
			case tc.service != "" && (r.Service == nil || r.Service.Name != tc.service || r.Service.Kind != tc.kind):
				t.Errorf("service %+v, want %s by its %s", r.Service, tc.service, tc.kind)
			}
			if !r.Drift.Known || len(r.Drift.Differences) != 0 {
				t.Errorf("drift %+v", r.Drift)
			}
		})
	}
}

func TestAnAffinityEntryIsAgedWithTheKernelsClockAndFollowedOnlyWhileFresh(t *testing.T) {
	pod2 := netip.AddrPortFrom(flowspec.Pod2, flowspec.EchoPort)
	tr, err := iptables.TracerFor(flowspec.State(), flowspec.Config())
	if err != nil {
		t.Fatal(err)
	}
	list := ""
	for _, s := range tr.ChainRules(model.IPv4, "nat", "PROXYD-SVC-J7IVFOTXGQJESJQI") {
		if strings.Contains(s.Comment(), pod2.String()) && strings.Contains(s.String(), "--rcheck") {
			list, _ = s.Arg("--name")
		}
	}
	if list == "" {
		t.Fatal("no recent check for pod2 in the sticky Service's chain")
	}
	q := Query{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.StickyVIP, 80), Proto: model.TCP}
	for _, tc := range []struct {
		name     string
		age      time.Duration
		active   bool
		outcomes int
	}{
		{"seen 10 s ago: every new connection goes back", 10 * time.Second, true, 1},
		{"seen 4 h ago, past the 3 h timeout: chosen anew", 4 * time.Hour, false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := uint64(jiffiesNow) - uint64(tc.age.Seconds()*hz)
			d := renderedKernel(t, map[string]string{
				list:           fmt.Sprintf("src=%v ttl: 64 last_seen: %d oldest_pkt: 1 %d\n", flowspec.Client, seen, seen),
				"someone-else": fmt.Sprintf("src=%v ttl: 64 last_seen: %d oldest_pkt: 1 %d\n", flowspec.Client, seen, seen),
			})
			r, err := explainer(d).Explain(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Affinity) != 1 {
				t.Fatalf("affinity %+v, want the entry of %s only", r.Affinity, list)
			}
			a := r.Affinity[0]
			if a.Endpoint != pod2 || !a.AgeKnown || math.Abs((a.Age-tc.age).Seconds()) > 1 || a.Active != tc.active || a.Timeout != 3*time.Hour {
				t.Errorf("affinity %+v, want %v aged %v, active %v", a, pod2, tc.age, tc.active)
			}
			if len(r.Outcomes) != tc.outcomes {
				t.Errorf("%d outcomes, want %d", len(r.Outcomes), tc.outcomes)
			}
		})
	}
}

func TestParseQueryReadsTheCommandLinesWords(t *testing.T) {
	local := func(a netip.Addr) bool { return a == flowspec.NodeIP }
	for _, tc := range []struct {
		name, from, to, proto, fromNode string
		want                            Query
		err                             string
	}{
		{"TCP by default, forwarded from a client", "10.244.1.100", "10.96.0.10:80", "", "auto",
			Query{Src: flowspec.Client, Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: model.TCP}, ""},
		{"a node address is the output hook", "10.88.0.2", "10.96.0.10:53", "udp", "auto",
			Query{Src: flowspec.NodeIP, Dst: netip.MustParseAddrPort("10.96.0.10:53"), Proto: model.UDP, FromNode: true}, ""},
		{"from-node can be forced", "10.244.1.100", "[fd00:10:96::10]:80", "SCTP", "true",
			Query{Src: flowspec.Client, Dst: netip.MustParseAddrPort("[fd00:10:96::10]:80"), Proto: model.SCTP, FromNode: true}, ""},
		{"a destination needs a port", "10.244.1.100", "10.96.0.10", "tcp", "auto", Query{}, "want IP:PORT"},
		{"an unknown protocol", "10.244.1.100", "10.96.0.10:80", "icmp", "auto", Query{}, "want tcp, udp or sctp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := ParseQuery(tc.from, tc.to, tc.proto, tc.fromNode, local)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || q != tc.want {
				t.Errorf("ParseQuery = %+v, %v; want %+v", q, err, tc.want)
			}
		})
	}
}

func TestTheDebugHandlerAnswersJSONTextAndSaysWhatItCannot(t *testing.T) {
	srv := httptest.NewServer(Handler(explainer(renderedKernel(t, nil))))
	defer srv.Close()
	var r Report
	if err := Fetch(context.Background(), srv.URL, map[string][]string{"from": {"10.244.1.100"}, "to": {"10.96.0.10:80"}}, &r); err != nil {
		t.Fatal(err)
	}
	if r.ReadBy != "test" || len(r.Outcomes) != 3 {
		t.Errorf("fetched %+v", r)
	}
	for _, tc := range []struct {
		query string
		code  int
		body  string
	}{
		{"from=10.244.1.100&to=10.96.0.10:80", http.StatusOK, "Service     default/web port p (TCP), by its ClusterIP"},
		{"from=10.244.1.100&to=10.96.0.10", http.StatusBadRequest, "want IP:PORT"},
		{"svc=default/web", http.StatusServiceUnavailable, "connection-balance collector"},
		{"svc=web", http.StatusBadRequest, "want NAMESPACE/NAME"},
	} {
		resp, err := http.Get(srv.URL + "/debug/explain?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		var body strings.Builder
		_, _ = fmt.Fprint(&body, readAll(t, resp))
		if resp.StatusCode != tc.code || !strings.Contains(body.String(), tc.body) {
			t.Errorf("?%s: %d %q, want %d containing %q", tc.query, resp.StatusCode, body.String(), tc.code, tc.body)
		}
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
