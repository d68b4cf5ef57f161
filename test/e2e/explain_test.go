//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/proxyd/proxyd/pkg/explain"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/test/e2e/lab"
)

// TestExplain checks proxyd explain against what real packets do: its
// probabilities against where 300 connections went, its masquerade
// verdict against the source the Pod sees, the affinity entry after a
// sticky connection, the client's established connections, and drift
// after a rule is deleted by hand.
func TestExplain(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:3]
	all := []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}
	tcp := []svcPort{{"tcp", v1.ProtocolTCP, 80}}
	target := []svcPort{{"tcp", v1.ProtocolTCP, 8080}}
	const vip, stickyVIP = "10.96.0.60", "10.96.0.61"
	e.createService(t, "explained", vip, nil, tcp...)
	// Pod1 reaches the VIP itself (hairpin); it runs here, as a Pod that
	// connects through this node's rules does (another node's Pod is
	// DNATed by its own node's proxy).
	explained := e.slice("explained-1", "explained", all, target...)
	explained.Endpoints[0].NodeName = ptr(e.lab.NodeName)
	e.createSlice(t, explained)
	e.createServiceWith(t, "explained-sticky", stickyVIP, nil, func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }, tcp...)
	e.createSlice(t, e.slice("explained-sticky-1", "explained-sticky", all, target...))
	addr := vip + ":80"
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			e.startDataplane(t, dp)
			t.Cleanup(func() { _, _ = e.lab.Exec(context.Background(), e.lab.NodeNS, "conntrack", "-F") })
			e.waitAnswers(t, "the VIP answers", addr, 1)

			t.Run("the prediction for a VIP matches where 300 connections went", func(t *testing.T) {
				r := e.explain(t, "--from", lab.ClientIP, "--to", addr)
				if r.ReadBy != "daemon" || r.Service == nil || r.Service.Name != "explained" || r.Verdict != "dnat" {
					t.Fatalf("read by %q, service %+v, verdict %q", r.ReadBy, r.Service, r.Verdict)
				}
				// At p < 0.01 one run in a hundred fails by chance; a
				// fresh sample of 300 then decides: chance alone fails
				// both one time in ten thousand, a real mismatch of a
				// size that matters fails both.
				for sample := 1; ; sample++ {
					p := e.fitPrediction(t, r, pods, addr)
					if p >= 0.01 {
						break
					}
					if sample == 2 {
						t.Fatalf("two samples of 300 connections reject the prediction (p=%.4f)", p)
					}
					t.Logf("p=%.4f: a second sample of 300 decides", p)
				}
				t.Logf("proxyd explain --from %s --to %s:\n%s", lab.ClientIP, addr, e.explainText(t, "--from", lab.ClientIP, "--to", addr))
				local := e.explain(t, "--from", lab.ClientIP, "--to", addr, "--local")
				if local.ReadBy != "cli" || local.Drift.Known || len(local.Outcomes) != len(r.Outcomes) {
					t.Errorf("read by the CLI itself: %+v, drift %+v", local.Outcomes, local.Drift)
				}
			})

			t.Run("the masquerade verdict matches the source address the Pod sees", func(t *testing.T) {
				for _, from := range []struct{ ns, src string }{
					{e.lab.ClientNS, lab.ClientIP}, // inside the cluster CIDR: kept
					{e.lab.NodeNS, e.lab.NodeIP},   // the node, outside it: masqueraded
					{pods[0].NS, pods[0].IP},       // hairpin, when it reaches itself
				} {
					r := e.explain(t, "--from", from.src, "--to", addr)
					seen := map[bool]bool{}
					for i := 0; i < 60 && len(seen) < 2; i++ {
						name, peer := e.peer(t, from.ns, from.src, addr)
						masq := predictedMasquerade(t, r, pods, name)
						if got := peer.Addr().String() != from.src; got != masq {
							t.Errorf("from %s to %s: explain says masquerade=%v (%v), the Pod saw %v", from.src, name, masq, r.Masquerade, peer)
						}
						seen[masq] = true
						if r.Masquerade.Decision != "for some endpoints" {
							break
						}
					}
					if r.Masquerade.Decision == "for some endpoints" && len(seen) < 2 {
						t.Errorf("from %s: 60 connections never took both ways %+v", from.src, r.Outcomes)
					}
					t.Logf("from %s: masquerade %s: %v", from.src, r.Masquerade.Decision, r.Masquerade.Why)
				}
			})

			t.Run("it names the affinity entry after a sticky connection", func(t *testing.T) {
				sticky := stickyVIP + ":80"
				name, _ := e.peer(t, e.lab.ClientNS, lab.ClientIP, sticky)
				r := e.explain(t, "--from", lab.ClientIP, "--to", sticky)
				if len(r.Affinity) != 1 || podAt(pods, r.Affinity[0].Endpoint) != name || !r.Affinity[0].Active {
					t.Fatalf("affinity %+v, want an active entry for %s", r.Affinity, name)
				}
				if len(r.Outcomes) != 1 || podAt(pods, r.Outcomes[0].Endpoint) != name || r.Outcomes[0].Probability != 1 {
					t.Errorf("outcomes %+v, want %s for certain", r.Outcomes, name)
				}
				t.Logf("affinity: %+v", r.Affinity[0])
				t.Logf("proxyd explain --from %s --to %s:\n%s", lab.ClientIP, sticky, e.explainText(t, "--from", lab.ClientIP, "--to", sticky))
			})

			t.Run("it lists the client's established connections to the VIP", func(t *testing.T) {
				c, name := e.hold(t, e.lab.ClientNS, addr)
				defer c.Close()
				r := e.explain(t, "--from", lab.ClientIP, "--to", addr)
				found := false
				for _, ct := range r.Conntrack {
					found = found || ct.Client.String() == c.LocalAddr().String() && podAt(pods, ct.Endpoint) == name
				}
				if !found {
					t.Errorf("conntrack %+v lacks %v → %s", r.Conntrack, c.LocalAddr(), name)
				}
			})

			t.Run("it reports drift after a rule is deleted by hand", func(t *testing.T) {
				var deleted, want string
				if dp.mode == "nftables" {
					// The VIP's dispatch element: the packet then
					// meets the refusal of unknown ClusterIP ports.
					deleted = "element ip proxyd service-ips { " + vip + " . tcp . 80 }"
					e.nft(t, "delete", "element", "ip", "proxyd", "service-ips", "{ "+vip+" . tcp . 80 }")
					want = "ip proxyd: map service-ips: element missing: " + vip + " . tcp . 80 comment \"default/explained/tcp/tcp\" : goto pick-tcp-3"
				} else {
					n, rule := e.natRule(t, dp, "PROXYD-SERVICES", "-A PROXYD-SERVICES -d "+vip+"/32 ")
					e.iptables(t, dp, "-t", "nat", "-D", "PROXYD-SERVICES", strconv.Itoa(n))
					deleted, want = rule, "rule missing: -A PROXYD-SERVICES -d "+vip+"/32"
				}
				r := e.explain(t, "--from", lab.ClientIP, "--to", addr)
				if !r.Drift.Known || len(r.Drift.Differences) == 0 || !strings.Contains(strings.Join(r.Drift.Differences, "\n"), want) {
					t.Errorf("drift %+v after deleting %v, want %q among it", r.Drift, deleted, want)
				}
				if r.Verdict == "dnat" {
					t.Errorf("the kernel lost the Service's rule, but explain still predicts %+v", r.Outcomes)
				}
				text := e.explainText(t, "--from", lab.ClientIP, "--to", addr)
				if !strings.Contains(text, "!!! DRIFT") {
					t.Errorf("the text does not shout about the drift:\n%s", text)
				}
				t.Logf("proxyd explain after deleting %s:\n%s", deleted, text)
			})
		})
	}
}

// fitPrediction sends 300 connections from the client to addr and
// returns the chi-square goodness of fit of where they went to the
// probabilities r predicts; an answer from a Pod r did not predict fails.
func (e *env) fitPrediction(t *testing.T, r *explain.Report, pods []lab.Pod, addr string) float64 {
	t.Helper()
	res := e.traffic(t, e.lab.ClientNS, "tcp", addr, 300, 1)
	if res.Failed() > 0 {
		t.Fatalf("%d of 300 failed: %+v", res.Failed(), res.Errors)
	}
	var counts []int
	var probs []float64
	predicted := map[string]bool{}
	for _, o := range r.Outcomes {
		name := podAt(pods, o.Endpoint)
		predicted[name] = true
		counts = append(counts, res.Counts[name])
		probs = append(probs, o.Probability)
	}
	for name, n := range res.Counts {
		if !predicted[name] {
			t.Fatalf("%s answered %d connections, but explain did not predict it: %+v", name, n, r.Outcomes)
		}
	}
	p := flowspec.ChiSquareP(counts, probs)
	t.Logf("predicted %v, seen %v over %v: chi-square p=%.3f", probs, counts, podNames(pods), p)
	return p
}

// explain runs proxyd explain ... -o json in the node namespace.
func (e *env) explain(t *testing.T, args ...string) *explain.Report {
	t.Helper()
	out := e.runExplain(t, append(args, "-o", "json")...)
	var r explain.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("proxyd explain %v: %v\n%s", args, err, out)
	}
	return &r
}

func (e *env) explainText(t *testing.T, args ...string) string {
	t.Helper()
	return e.runExplain(t, args...)
}

func (e *env) runExplain(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.lab.NodeNS, os.Getenv("PROXYD_BIN"), "explain"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("proxyd explain %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// peer opens one connection from src in ns to addr and asks the Pod who
// answered which source it sees.
func (e *env) peer(t *testing.T, ns, src, addr string) (string, netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := lab.DialContextFrom(ns, src)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s in %s: %v", addr, src, ns, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("peer\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("peer answer from %s: %v", addr, err)
	}
	name, peer, ok := strings.Cut(strings.TrimSpace(line), " ")
	ap, perr := netip.ParseAddrPort(peer)
	if !ok || perr != nil {
		t.Fatalf("peer answer %q", line)
	}
	return name, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// hold opens a connection from ns to addr, has it answered once and
// returns it open, with the name of the Pod that answered.
func (e *env) hold(t *testing.T, ns, addr string) (net.Conn, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := lab.DialContext(ns)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns, err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, strings.TrimSpace(line)
}

// podAt names the Pod at an endpoint address.
func podAt(pods []lab.Pod, ep netip.AddrPort) string {
	for _, p := range pods {
		if p.IP == ep.Addr().String() {
			return p.Name
		}
	}
	return ep.String()
}

// predictedMasquerade is explain's masquerade verdict for the outcome that
// reaches the named Pod.
func predictedMasquerade(t *testing.T, r *explain.Report, pods []lab.Pod, name string) bool {
	t.Helper()
	for _, o := range r.Outcomes {
		if podAt(pods, o.Endpoint) == name {
			return o.Masquerade
		}
	}
	t.Fatalf("%s answered, but explain did not predict it: %+v", name, r.Outcomes)
	return false
}

// natRule returns the position in chain (1-based, as iptables -D takes
// it) and the text of the first rule of dp's IPv4 nat table that starts
// with prefix, as iptables-save prints it.
func (e *env) natRule(t *testing.T, dp dataplane, chain, prefix string) (int, string) {
	t.Helper()
	out, err := e.lab.Exec(context.Background(), e.lab.NodeNS, "iptables-"+variantOf(dp)+"-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "-A "+chain+" ") {
			n++
		}
		if strings.HasPrefix(line, prefix) {
			return n, line
		}
	}
	t.Fatalf("no nat rule starting %q in:\n%s", prefix, out)
	return 0, ""
}

func (e *env) nft(t *testing.T, args ...string) {
	t.Helper()
	if _, err := e.lab.Exec(context.Background(), e.lab.NodeNS, append([]string{"nft"}, args...)...); err != nil {
		t.Fatal(err)
	}
}

func (e *env) iptables(t *testing.T, dp dataplane, args ...string) {
	t.Helper()
	if _, err := e.lab.Exec(context.Background(), e.lab.NodeNS, append([]string{"iptables-" + variantOf(dp)}, args...)...); err != nil {
		t.Fatal(err)
	}
}

func variantOf(dp dataplane) string {
	if strings.Contains(dp.name, "legacy") {
		return "legacy"
	}
	return "nft"
}
