package iptables

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/testenv"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// The kernel tests run the test binary again inside a fresh network
// namespace ("ip netns exec NS /path/to/iptables.test -test.run=..."), so
// every iptables program they start inherits the namespace; nothing runs
// against the root namespace's tables.
const (
	envNetns   = "PXD_IPT_NETNS"   // set in the child: the namespace it runs in
	envVariant = "PXD_IPT_VARIANT" // set in the child: nft or legacy
	envMeasure = "PXD_IPT_MEASURE" // set by hand: services for TestKernelMeasure
	// envParentNetns is the namespace the parent runs in, which the child
	// must not be in.
	envParentNetns = "PXD_IPT_PARENT_NETNS"
)

func TestKernel(t *testing.T) {
	runInNetns(t, "^TestKernelInNetns$")
}

// TestKernelMeasure times real syncs at $PXD_IPT_MEASURE services × 10
// endpoints; it runs only when asked for.
func TestKernelMeasure(t *testing.T) {
	if os.Getenv(envMeasure) == "" {
		t.Skip("set " + envMeasure + "=N to time syncs of N Services in a netns")
	}
	runInNetns(t, "^TestKernelMeasureInNetns$")
}

// runInNetns runs the tests matching run in a fresh netns, once per variant.
func runInNetns(t *testing.T, run string) {
	if os.Getenv(envNetns) != "" {
		t.Skip("already inside the test namespace")
	}
	testenv.NeedRoot(t)
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Fatalf("running as root, but iproute2 is missing: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent, err := netnsID("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			b := DefaultBinaries(v)
			for _, name := range []string{b.Restore, b.Save, b.IPTables, b.Restore6, b.Save6, b.IP6Tables} {
				if _, err := exec.LookPath(name); err != nil {
					t.Fatalf("running as root, but %s is missing: %v", name, err)
				}
			}
			ns := newNetns(t, ip)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, ip, "netns", "exec", ns, self, "-test.run="+run, "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), envNetns+"="+ns, envVariant+"="+string(v), envParentNetns+"="+parent)
			out, err := cmd.CombinedOutput()
			t.Logf("in netns %s:\n%s", ns, out)
			if err != nil {
				t.Fatalf("the test in the namespace failed: %v", err)
			}
			if !bytes.Contains(out, []byte("--- PASS: ")) || bytes.Contains(out, []byte("--- SKIP: ")) {
				t.Fatal("the test in the namespace did not run")
			}
		})
	}
}

// newNetns creates a network namespace that the test's cleanup deletes.
func newNetns(t *testing.T, ip string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	ns := "pxd-ipt-" + hex.EncodeToString(b[:])
	if out, err := exec.Command(ip, "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	return ns
}

// inNetns fails the test unless it runs in the namespace the parent made
// (/run/netns/NAME) and that is not the namespace the parent runs in.
func inNetns(t *testing.T) Variant {
	t.Helper()
	ns := os.Getenv(envNetns)
	if ns == "" {
		t.Skip("runs only inside the namespace TestKernel creates")
	}
	self, err := netnsID("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	want, err := netnsID("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	if self != want || self == os.Getenv(envParentNetns) {
		t.Fatalf("refusing to touch iptables: in netns %s, want %s (%s), the parent's is %s", self, ns, want, os.Getenv(envParentNetns))
	}
	return Variant(os.Getenv(envVariant))
}

// netnsID identifies the network namespace behind path.
func netnsID(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", fmt.Errorf("identify netns: %w", err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

// recorder remembers what a restorer was asked to write.
type recorder struct {
	restorer
	writes [][]byte
}

func (r *recorder) Restore(ctx context.Context, data []byte) error {
	r.writes = append(r.writes, data)
	return r.restorer.Restore(ctx, data)
}

func saveAll(t *testing.T, v Variant, fam model.IPFamily) []byte {
	t.Helper()
	b := DefaultBinaries(v)
	name := b.Save
	if fam == model.IPv6 {
		name = b.Save6
	}
	out, err := exec.Command(name).Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// proxydChainsIn returns the sorted PROXYD-* chains of one table in a
// save dump.
func proxydChainsIn(t *testing.T, dump []byte, table string) []string {
	t.Helper()
	rs := newRuleset()
	if err := rs.restore(dump, false); err != nil {
		t.Fatalf("parse iptables-save output: %v\n%s", err, dump)
	}
	return rs.proxydChains(table)
}

func TestKernelInNetns(t *testing.T) {
	v := inNetns(t)
	ctx := context.Background()
	b := DefaultBinaries(v)
	// Someone else's rules, which proxyd must leave alone.
	run(t, b.IPTables, "-t", "nat", "-N", "KUBE-FOREIGN")
	run(t, b.IPTables, "-t", "nat", "-A", "PREROUTING", "-s", "192.0.2.1", "-j", "KUBE-FOREIGN")
	run(t, b.IPTables, "-t", "filter", "-A", "INPUT", "-s", "192.0.2.2", "-j", "DROP")

	cfg := flowspec.Config()
	p, err := New(cfg, WithVariant(v))
	if err != nil {
		t.Fatal(err)
	}
	recs := map[model.IPFamily]*recorder{}
	for _, f := range p.fams {
		recs[f.fam] = &recorder{restorer: f.restorer}
		f.restorer = recs[f.fam]
	}

	s := flowspec.State()
	start := time.Now()
	if err := p.Sync(ctx, s, model.Compute(nil, s)); err != nil {
		t.Fatalf("first Sync: %v", err)
	}
	t.Logf("first sync took %v: %+v", time.Since(start), p.LastSyncStats())

	t.Run("iptables-save shows the rendered chains and the jumps", func(t *testing.T) {
		for _, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
			dump := saveAll(t, v, fam)
			rendered := Render(s, cfg, fam)
			for _, table := range []string{tableNAT, tableFilter} {
				want := proxydChainsIn(t, rendered, table)
				if got := proxydChainsIn(t, dump, table); !slices.Equal(got, want) {
					t.Errorf("%v %s: kernel chains %v, rendered %v", fam, table, got, want)
				}
			}
			for _, j := range jumpRules {
				line := "-A " + j.chain + " " + joinWords(j.spec)
				if !bytes.Contains(dump, []byte(line+"\n")) {
					t.Errorf("%v: iptables-save lacks %q", fam, line)
				}
			}
		}
	})

	t.Run("the rules the kernel holds satisfy the flow spec", func(t *testing.T) {
		tr, err := NewTracer(saveAll(t, v, model.IPv4), saveAll(t, v, model.IPv6))
		if err != nil {
			t.Fatal(err)
		}
		flowspec.Run(t, tr)
		flowspec.RunExternal(t, tr)
		flowspec.RunAffinity(t, tr)
	})

	t.Run("Detect finds the variant proxyd wrote to", func(t *testing.T) {
		if got, err := Detect(); got != v {
			t.Errorf("Detect = %q, %v; want %q", got, err, v)
		}
	})

	t.Run("a changed endpoint set rewrites only that Service's chain", func(t *testing.T) {
		before := saveAll(t, v, model.IPv4)
		next := withPort(s, webKey, setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod3), endpoint(flowspec.Pod1v6), endpoint(flowspec.Pod2v6)))
		n4, n6 := len(recs[model.IPv4].writes), len(recs[model.IPv6].writes)
		start := time.Now()
		if err := p.Sync(ctx, next, model.Compute(s, next)); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		t.Logf("partial sync took %v: %+v", time.Since(start), p.LastSyncStats())
		if p.LastSyncStats().Full {
			t.Error("the second sync was full")
		}
		if len(recs[model.IPv6].writes) != n6 {
			t.Error("an IPv4-only change restored IPv6 rules")
		}
		if len(recs[model.IPv4].writes) != n4+1 {
			t.Fatalf("%d IPv4 restores, want 1", len(recs[model.IPv4].writes)-n4)
		}
		got := summarize(t, string(recs[model.IPv4].writes[n4]))
		// Pod2 runs on another node: it has no chain, the choice DNATs
		// to it.
		want := restoreSummary{Declared: map[string][]string{"nat": {svcChain(webKey)}}, Deleted: map[string][]string{}}
		if !slices.Equal(got.Declared["nat"], want.Declared["nat"]) || len(got.Deleted["nat"]) != 0 || len(got.Declared["filter"]) != 0 {
			t.Errorf("restore input %+v, want %+v", got, want)
		}
		// In the kernel: web's chain changed, every other line is as it
		// was.
		after := saveAll(t, v, model.IPv4)
		changed := func(line string) bool { return strings.Contains(line, svcChain(webKey)+" ") }
		if a, b := otherLines(before, changed), otherLines(after, changed); !slices.Equal(a, b) {
			t.Errorf("lines of other chains changed:\nbefore %q\nafter  %q", a, b)
		}
		gone := netip.AddrPortFrom(flowspec.Pod2, flowspec.EchoPort).String()
		for _, line := range otherLines(after, func(line string) bool { return !changed(line) }) {
			if strings.Contains(line, gone) {
				t.Errorf("web's chain still sends to %s: %s", gone, line)
			}
		}
		tr, err := NewTracer(after, saveAll(t, v, model.IPv6))
		if err != nil {
			t.Fatal(err)
		}
		pk := flowspec.Packet{Src: flowspec.Client, Dst: netip.AddrPortFrom(flowspec.WebVIP, 80), Proto: model.TCP}
		seen := map[netip.AddrPort]bool{}
		for i := range uint32(64) {
			seen[tr.Trace(pk, func(n uint32) uint32 { return i * (n / 64) }).Endpoint] = true
		}
		if len(seen) != 2 || seen[netip.AddrPortFrom(flowspec.Pod2, flowspec.EchoPort)] {
			t.Errorf("after the change web reaches %v, want Pod1 and Pod3", seen)
		}
	})

	t.Run("a chain flushed by someone else is found by the mark and repaired", func(t *testing.T) {
		if err := p.Sync(ctx, s, model.Diff{}); err != nil {
			t.Fatal(err)
		}
		f := p.fams[0]
		m1, err1 := f.watch.mark()
		m2, err2 := f.watch.mark()
		if err1 != nil || err2 != nil || m1 != m2 || !f.markOK || f.mark != m1 {
			t.Fatalf("marks %v (%v), %v (%v), recorded %v (trusted %v): want one mark, recorded after the write", m1, err1, m2, err2, f.mark, f.markOK)
		}
		if err := p.Sync(ctx, s, model.Diff{}); err != nil || p.LastSyncStats().KernelOps != 0 || p.LastSyncStats().DriftRepairs != 0 {
			t.Fatalf("a sync without drift: %v, %+v", err, p.LastSyncStats())
		}
		run(t, b.IPTables, "-t", "nat", "-F", svcChain(webKey))
		if m3, _ := f.watch.mark(); m3 == m1 {
			t.Fatalf("the mark %v did not move when a chain was flushed", m3)
		}
		if err := p.Sync(ctx, s, model.Diff{}); err != nil || p.LastSyncStats().DriftRepairs != 1 {
			t.Fatalf("the sync after the flush: %v, %+v; want one repair", err, p.LastSyncStats())
		}
		tr, err := NewTracer(saveAll(t, v, model.IPv4), saveAll(t, v, model.IPv6))
		if err != nil {
			t.Fatal(err)
		}
		flowspec.Run(t, tr)
		if err := p.Sync(ctx, s, model.Diff{}); err != nil || p.LastSyncStats().KernelOps != 0 {
			t.Fatalf("the sync after the repair: %v, %+v; want nothing written", err, p.LastSyncStats())
		}
	})

	t.Run("a service port the kernel refuses is left out and everything else programmed", func(t *testing.T) {
		// An external IP with a zone reaches the restore text only if
		// the model lets it through; ip6tables-restore refuses it.
		zoned := model.ServicePortKey{Namespace: "default", Name: "zoned", Port: "p", Protocol: model.TCP}
		bad := withPort(s, zoned, func(sp *model.ServicePort) {
			sp.ClusterIPs, sp.Port, sp.NodePort = []netip.Addr{netip.MustParseAddr("fd00:10:96::77")}, 80, 30077
			sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("fd00::1%eth0")}
			setEndpoints(endpoint(flowspec.Pod1v6))(sp)
		})
		err := p.Sync(ctx, bad, model.Diff{})
		var re *proxier.RefusedError
		if !errors.As(err, &re) || !slices.Equal(re.Ports, []model.ServicePortKey{zoned}) {
			t.Fatalf("Sync = %v, want %v refused", err, zoned)
		}
		t.Logf("refusal: %v", err)
		dump := saveAll(t, v, model.IPv6)
		if bytes.Contains(dump, []byte("default/zoned")) || !bytes.Contains(dump, []byte("default/web:p cluster IP")) {
			t.Errorf("want web programmed and zoned left out:\n%s", dump)
		}
		tr, err := NewTracer(saveAll(t, v, model.IPv4), dump)
		if err != nil {
			t.Fatal(err)
		}
		flowspec.Run(t, tr)
	})

	t.Run("the kernel's rules for the traffic-policy spec satisfy it", func(t *testing.T) {
		ps := flowspec.PolicyState()
		if err := p.Sync(ctx, ps, model.Diff{}); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		tr, err := NewTracer(saveAll(t, v, model.IPv4), saveAll(t, v, model.IPv6))
		if err != nil {
			t.Fatal(err)
		}
		flowspec.RunPolicy(t, tr)
	})

	t.Run("Cleanup leaves no PROXYD string and the foreign rules in place", func(t *testing.T) {
		if err := p.Cleanup(ctx); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
		for _, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
			dump := saveAll(t, v, fam)
			if bytes.Contains(dump, []byte("PROXYD")) {
				t.Errorf("%v: iptables-save still mentions PROXYD:\n%s", fam, dump)
			}
			if fam == model.IPv4 {
				for _, want := range []string{"-A PREROUTING -s 192.0.2.1/32 -j KUBE-FOREIGN", "-A INPUT -s 192.0.2.2/32 -j DROP"} {
					if !bytes.Contains(dump, []byte(want)) {
						t.Errorf("Cleanup removed a foreign rule %q:\n%s", want, dump)
					}
				}
			}
		}
		if err := p.Cleanup(ctx); err != nil {
			t.Errorf("Cleanup with nothing left: %v", err)
		}
	})
}

// otherLines returns the rule and chain lines of a dump for which skip is
// false, without comments and counters.
func otherLines(dump []byte, skip func(string) bool) []string {
	var out []string
	for line := range strings.Lines(string(dump)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || skip(line) {
			continue
		}
		out = append(out, line)
	}
	return out
}

func TestKernelMeasureInNetns(t *testing.T) {
	v := inNetns(t)
	n, err := strconv.Atoi(os.Getenv(envMeasure))
	if err != nil {
		t.Fatalf("%s: %v", envMeasure, err)
	}
	ctx := context.Background()
	cfg := flowspec.Config()
	p, err := New(cfg, WithVariant(v), WithFamilies(model.IPv4))
	if err != nil {
		t.Fatal(err)
	}
	s := syntheticState(n, 10, false)
	timed := func(what string, s *model.State) {
		t.Helper()
		start := time.Now()
		if err := p.Sync(ctx, s, model.Diff{}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s %s at %d services: %v (%+v)", v, what, n, time.Since(start).Round(time.Millisecond), p.LastSyncStats())
	}
	timed("full sync", s)
	f := p.fams[0]
	start := time.Now()
	const reads = 100
	for range reads {
		if _, err := f.watch.mark(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%s drift check without drift (the mark) at %d services: %v", v, n, (time.Since(start) / reads).Round(time.Microsecond))
	start = time.Now()
	if found, err := f.verify(ctx); err != nil || len(found) != 0 {
		t.Fatalf("verify: %v, %v", found, err)
	}
	t.Logf("%s drift check after a foreign write (listing and comparing) at %d services: %v", v, n, time.Since(start).Round(time.Millisecond))
	k := slices.SortedFunc(func(yield func(model.ServicePortKey) bool) {
		for k := range s.Services {
			if !yield(k) {
				return
			}
		}
	}, model.ServicePortKey.Compare)[n/2]
	for i := range 3 {
		next := withPort(s, k, func(sp *model.ServicePort) {
			setEndpoints(append(slices.Clone(sp.ClusterEndpoints[1:]), endpoint(netip.AddrFrom4([4]byte{10, 250, 0, byte(i)})))...)(sp)
		})
		timed(fmt.Sprintf("partial sync #%d, one endpoint replaced", i), next)
		s = next
	}
	p.alwaysServices = true
	for i := range 3 {
		next := withPort(s, k, func(sp *model.ServicePort) {
			setEndpoints(append(slices.Clone(sp.ClusterEndpoints[1:]), endpoint(netip.AddrFrom4([4]byte{10, 251, 0, byte(i)})))...)(sp)
		})
		timed(fmt.Sprintf("partial sync #%d with PROXYD-SERVICES rewritten too", i), next)
		s = next
	}
	p.alwaysServices = false
	p.RequestFullSync()
	timed("full resync", s)
	start = time.Now()
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s cleanup at %d services: %v", v, n, time.Since(start).Round(time.Millisecond))
}
