package explain

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/internal/cttest"
	"github.com/proxyd/proxyd/internal/testenv"
	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/iptables"
)

// The kernel tests run the test binary again inside a fresh network
// namespace, so that what they program (iptables-restore and
// iptables-save, the nftables backend, real connections) acts on that
// namespace only.
const (
	envNetns   = "PXD_EXPLAIN_NETNS"
	envVariant = "PXD_EXPLAIN_VARIANT"
)

// inNewNetns runs the test named test of this binary in a new network
// namespace, with env added to its environment.
func inNewNetns(t *testing.T, test string, env ...string) {
	t.Helper()
	if os.Getenv(envNetns) != "" {
		t.Skip("already inside the test namespace")
	}
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "ip")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns := testns.New(t, "explain")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, self, "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), envNetns+"="+ns.Name), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("in netns %s:\n%s", ns.Name, out)
	if err != nil {
		t.Fatalf("the test in the namespace failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+test)) {
		t.Fatal("the test in the namespace did not run")
	}
}

func TestKernelIPTables(t *testing.T) {
	for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			b := iptables.DefaultBinaries(v)
			for _, name := range []string{b.Restore, b.Save, b.IPTables, b.Restore6, b.Save6, b.IP6Tables} {
				testenv.NeedTool(t, name)
			}
			inNewNetns(t, "TestKernelIPTablesInNetns", envVariant+"="+string(v))
		})
	}
}

// inNetns fails unless the test runs in the namespace the parent made.
func inNetns(t *testing.T) {
	t.Helper()
	ns := os.Getenv(envNetns)
	if ns == "" {
		t.Skip("runs only inside the namespace its parent test creates")
	}
	var self, want syscall.Stat_t
	if syscall.Stat("/proc/self/ns/net", &self) != nil || syscall.Stat("/run/netns/"+ns, &want) != nil || self.Ino != want.Ino {
		t.Fatalf("refusing to touch the kernel's rules: not in netns %s", ns)
	}
}

// sh runs argv and returns its output, failing the test on error.
func sh(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// nodeNetwork gives the namespace the node's address on a veth, and a
// route for the service range so that connections the node makes itself
// reach the output hook's DNAT.
func nodeNetwork(t *testing.T) {
	t.Helper()
	sh(t, "ip", "link", "add", "pxd-a", "type", "veth", "peer", "name", "pxd-b")
	sh(t, "ip", "addr", "add", flowspec.NodeIP.String()+"/24", "dev", "pxd-a")
	sh(t, "ip", "link", "set", "pxd-a", "up")
	sh(t, "ip", "link", "set", "pxd-b", "up")
	sh(t, "ip", "route", "add", flowspec.ServiceCIDR.String(), "dev", "pxd-a")
	sh(t, "ip", "route", "add", "10.244.0.0/16", "dev", "pxd-a")
}

// explainFunc explains a TCP connection, logging the text.
type explainFunc func(t *testing.T, src netip.Addr, dst netip.AddrPort) *Report

func explainWith(x *Explainer) explainFunc {
	return func(t *testing.T, src netip.Addr, dst netip.AddrPort) *Report {
		t.Helper()
		q, err := ParseQuery(src.String(), dst.String(), "tcp", "auto", InterfaceAddrs())
		if err != nil {
			t.Fatal(err)
		}
		r, err := x.Explain(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		_ = r.WriteText(&b)
		t.Logf("explain %v → %v:\n%s", src, dst, b.String())
		return r
	}
}

// knock sends one SYN to dst from the node, which nobody answers: enough
// for the output hook to pick an endpoint and remember the affinity.
func knock(dst netip.AddrPort) {
	d := net.Dialer{Timeout: 300 * time.Millisecond}
	if c, err := d.Dial("tcp", dst.String()); err == nil {
		_ = c.Close()
	}
}

// established puts an established connection from the client to web,
// answered by ep, into the namespace's conntrack table.
func established(t *testing.T, web, ep netip.AddrPort) {
	t.Helper()
	tab, err := cttest.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	f := cttest.Flow{Proto: unix.IPPROTO_TCP, Src: netip.AddrPortFrom(flowspec.Client, 40000), Dst: web, Reply: ep, TCPState: conntrack.TCPEstablished}
	if err := tab.Create(f); err != nil {
		t.Fatal(err)
	}
}

func TestKernelIPTablesInNetns(t *testing.T) {
	inNetns(t)
	v := iptables.Variant(os.Getenv(envVariant))
	ctx := context.Background()
	nodeNetwork(t)

	s := flowspec.State()
	p, err := iptables.New(flowspec.Config(), iptables.WithVariant(v))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, s, model.Compute(nil, s)); err != nil {
		t.Fatal(err)
	}
	reader, err := conntrack.NewReader(0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	explain := explainWith(&Explainer{Dataplane: &IPTables{Variant: v, Config: p.Config()}, Conntrack: reader,
		State: func() *model.State { return s }, ReadBy: "test"})
	web := netip.AddrPortFrom(flowspec.WebVIP, 80)
	pods := []netip.AddrPort{netip.AddrPortFrom(flowspec.Pod1, 8080), netip.AddrPortFrom(flowspec.Pod2, 8080), netip.AddrPortFrom(flowspec.Pod3, 8080)}

	clusterIPAndNodeCases(t, explain, web, pods, func(rule string) bool {
		return strings.Contains(rule, `--comment "default/web:p cluster IP"`)
	})

	t.Run("a Pod reaching itself is masqueraded through its own endpoint only", func(t *testing.T) {
		r := explain(t, flowspec.Pod1, web)
		if r.Masquerade.Decision != "for some endpoints" || !strings.Contains(strings.Join(r.Masquerade.Why, " "), "hairpin") {
			t.Errorf("masquerade %+v", r.Masquerade)
		}
	})

	t.Run("after a sticky connection the kernel's affinity entry is named and followed", func(t *testing.T) {
		sticky := netip.AddrPortFrom(flowspec.StickyVIP, 80)
		// A SYN from the node: the output hook's DNAT puts the node's
		// address in the chosen endpoint's recent list. Nobody answers.
		knock(sticky)
		r := explain(t, flowspec.NodeIP, sticky)
		if len(r.Affinity) != 1 || !r.Affinity[0].Active || !strings.HasPrefix(r.Affinity[0].Where, "xt_recent list PROXYD-SEP-") ||
			r.Affinity[0].Timeout != 10800*time.Second {
			t.Fatalf("affinity %+v, want one active entry of a proxyd list with the Service's timeout", r.Affinity)
		}
		if len(r.Outcomes) != 1 || r.Outcomes[0].Endpoint != r.Affinity[0].Endpoint || r.Outcomes[0].Probability != 1 {
			t.Errorf("outcomes %+v, want all to the affinity's endpoint %v", r.Outcomes, r.Affinity[0].Endpoint)
		}
		if r.ConntrackOther != 1 {
			t.Errorf("%d unanswered entries, want the one SYN", r.ConntrackOther)
		}
	})

	t.Run("an established connection in conntrack is listed with its endpoint", func(t *testing.T) {
		established(t, web, pods[1])
		r := explain(t, flowspec.Client, web)
		if len(r.Conntrack) != 1 || r.Conntrack[0].Endpoint != pods[1] || r.Conntrack[0].State != "ESTABLISHED" {
			t.Errorf("conntrack %+v", r.Conntrack)
		}
	})

	t.Run("a rule deleted by hand is reported as drift, and the trace follows the kernel", func(t *testing.T) {
		b := iptables.DefaultBinaries(v)
		rule := fmt.Sprintf(`-d %s/32 -p tcp -m comment --comment default/web:p\ cluster\ IP -m tcp --dport 80 -j `, flowspec.WebVIP)
		save, err := exec.Command(b.Save, "-t", "nat").Output()
		if err != nil {
			t.Fatal(err)
		}
		var del []string
		for _, line := range strings.Split(string(save), "\n") {
			if strings.HasPrefix(line, "-A PROXYD-SERVICES -d "+flowspec.WebVIP.String()+"/32 -p tcp") {
				del = strings.Fields(strings.Replace(line, `"default/web:p cluster IP"`, "COMMENT", 1))
			}
		}
		if del == nil {
			t.Fatalf("no rule for the web VIP in:\n%s (looking for %s)", save, rule)
		}
		for i, w := range del {
			if w == "COMMENT" {
				del[i] = "default/web:p cluster IP"
			}
		}
		sh(t, append([]string{b.IPTables, "-t", "nat", "-D"}, del[1:]...)...)
		r := explain(t, flowspec.Client, web)
		if !r.Drift.Known || len(r.Drift.Differences) < 2 ||
			!strings.HasPrefix(r.Drift.Differences[0], "IPv4 nat: rule missing: -A PROXYD-SERVICES -d 10.96.0.10/32") {
			t.Errorf("drift %+v", r.Drift)
		}
		if r.Service != nil || r.Verdict == "dnat" {
			t.Errorf("the kernel no longer sends it to the Service, yet the trace says %v %s", r.Service, r.Verdict)
		}
		var b2 strings.Builder
		_ = r.WriteText(&b2)
		if !strings.Contains(b2.String(), "!!! DRIFT") {
			t.Error("the text does not shout about the drift")
		}
	})
}

// clusterIPAndNodeCases are the cases every mode's kernel test shares: a
// client's connection to web's ClusterIP (the Service, matched by a rule
// isMatch accepts, a third to each Pod, no masquerade, no drift) and the
// node's own connection (masqueraded: it comes from outside the cluster
// CIDR).
func clusterIPAndNodeCases(t *testing.T, explain explainFunc, web netip.AddrPort, pods []netip.AddrPort, isMatch func(rule string) bool) {
	t.Run("a client's connection to a ClusterIP: the Service, a third to each Pod, no masquerade, no drift", func(t *testing.T) {
		r := explain(t, flowspec.Client, web)
		if r.Service == nil || r.Service.Name != "web" || r.Service.Kind != "ClusterIP" || r.MatchedBy == nil || !isMatch(r.MatchedBy.Rule) {
			t.Errorf("service %+v matched by %+v", r.Service, r.MatchedBy)
		}
		if len(r.Outcomes) != 3 {
			t.Fatalf("%d outcomes, want 3", len(r.Outcomes))
		}
		for i, o := range r.Outcomes {
			if o.Endpoint != pods[i] || math.Abs(o.Probability-1.0/3) > 1e-9 || o.Masquerade {
				t.Errorf("outcome %d: %+v, want %v at 1/3 unmasqueraded", i, o, pods[i])
			}
		}
		if r.Masquerade.Decision != "no" || !strings.Contains(strings.Join(r.Masquerade.Why, " "), "inside the cluster CIDR 10.244.0.0/16") {
			t.Errorf("masquerade %+v", r.Masquerade)
		}
		if !r.Drift.Known || len(r.Drift.Differences) != 0 {
			t.Errorf("drift %+v: the kernel holds exactly what proxyd wrote", r.Drift)
		}
	})

	t.Run("the node's own connection is masqueraded, as it comes from outside the cluster CIDR", func(t *testing.T) {
		r := explain(t, flowspec.NodeIP, web)
		if !r.Query.FromNode || r.Masquerade.Decision != "yes" || !strings.Contains(r.Masquerade.Why[0], "outside the cluster CIDR") {
			t.Errorf("from node %v, masquerade %+v", r.Query.FromNode, r.Masquerade)
		}
	})
}
