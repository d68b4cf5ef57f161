package nftables

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func newKernelProxier(t *testing.T, ns *testns.NS) *Proxier {
	t.Helper()
	p, err := New(flowspec.Config(), WithNetNS(ns.FD))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if p.sock == nil {
		t.Fatal("the netlink socket was not captured: syncs would wait for acks without a deadline")
	}
	return p
}

// The table proxyd writes over netlink must read back, through Debian's
// nft, exactly as its own rendering and exactly as the same text loaded by
// nft itself: no unknown expressions, no raw bytes.
func TestKernelListingMatchesRenderingAndNft(t *testing.T) {
	primary := flowspec.Config()
	primary.NodePortPrimary = true // NodePorts on the node's own address only
	for name, cfg := range map[string]proxier.Config{"default": flowspec.Config(), "nodeport-addresses primary": primary} {
		t.Run(name, func(t *testing.T) { kernelListingMatches(t, cfg) })
	}
}

func kernelListingMatches(t *testing.T, cfg proxier.Config) {
	ns := testns.New(t, "nft")
	p, err := New(cfg, WithNetNS(ns.FD))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	st := flowspec.State()
	if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
		t.Fatalf("sync: %v", err)
	}
	for _, f := range []model.IPFamily{model.IPv4, model.IPv6} {
		want := Render(st, cfg, f).String()
		got := ns.Run(t, "nft", "list", "table", nftFamily(f).String(), TableName)
		if nft.CanonicalListing(got) != nft.CanonicalListing(want) {
			t.Errorf("%v: kernel listing differs from rendering\n--- kernel\n%s\n--- rendering\n%s", f, got, want)
		}
		ref := testns.New(t, "nftref")
		if out, err := ref.Try("sh", "-c", "nft -f - <<'EOF'\n"+want+"EOF\n"); err != nil {
			t.Fatalf("nft -f of the rendering: %v\n%s", err, out)
		}
		byNft := ref.Run(t, "nft", "list", "table", nftFamily(f).String(), TableName)
		if nft.CanonicalListing(byNft) != nft.CanonicalListing(got) {
			t.Errorf("%v: netlink-written table lists differently from the nft-written one\n--- proxyd\n%s\n--- nft\n%s", f, got, byNft)
		}
		// What nft lists, nft loads back, and lists the same again.
		ref.Run(t, "nft", "delete", "table", nftFamily(f).String(), TableName)
		if out, err := ref.Try("sh", "-c", "nft -f - <<'EOF'\n"+got+"EOF\n"); err != nil {
			t.Fatalf("nft -f of the kernel's listing: %v\n%s", err, out)
		}
		if again := ref.Run(t, "nft", "list", "table", nftFamily(f).String(), TableName); nft.CanonicalListing(again) != nft.CanonicalListing(got) {
			t.Errorf("%v: the listing, loaded back by nft, lists differently\n--- before\n%s\n--- after\n%s", f, got, again)
		}
		if strings.Contains(got, "unknown") || strings.Contains(got, "invalid") {
			t.Errorf("listing has unknown expressions:\n%s", got)
		}
	}
	// The flow spec holds on what the kernel holds, read back.
	tracer := newTracer(readBackMatches(t, ns, st, cfg)...)
	flowspec.Run(t, tracer)
	flowspec.RunExternal(t, tracer)
	flowspec.RunAffinity(t, tracer)
}

// readBackMatches reads both families' tables back from the kernel,
// checks that they are the rendering, and returns them.
func readBackMatches(t *testing.T, ns *testns.NS, st *model.State, cfg proxier.Config) []*nft.Table {
	t.Helper()
	r, err := nft.NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var tables []*nft.Table
	for _, f := range []model.IPFamily{model.IPv4, model.IPv6} {
		back, err := r.Table(nftFamily(f), TableName)
		if err != nil {
			t.Fatalf("%v: read back: %v", f, err)
		}
		if want := Render(st, cfg, f); !reflect.DeepEqual(back.Canonical(), want.Canonical()) {
			t.Errorf("%v: read back\n%s\nrendered\n%s", f, back.Canonical(), want.Canonical())
		}
		tables = append(tables, back)
	}
	return tables
}

// A large full sync is one batch: it must fit the socket (buffers forced
// past the sysctl limits) and keep each element list under netlink's
// 16-bit attribute length, or the kernel misreads it.
func TestKernelSyncOfALargeTable(t *testing.T) {
	ns := testns.New(t, "nftbig")
	p := newKernelProxier(t, ns)
	st := bigState(1500, 10)
	if err := p.Sync(context.Background(), st, model.Compute(nil, st)); err != nil {
		t.Fatalf("sync of 1500 services × 10 endpoints: %v", err)
	}
	if got := p.LastSyncStats(); !got.Full {
		t.Errorf("stats = %+v", got)
	}
	out := ns.Run(t, "nft", "list", "map", "ip", TableName, ServiceIPsMap)
	if n := strings.Count(out, ": goto "+PickChain(model.TCP, 10)); n != 1500 {
		t.Errorf("service-ips has %d elements to %s, want 1500", n, PickChain(model.TCP, 10))
	}
	eps := ns.Run(t, "nft", "list", "map", "ip", TableName, EndpointsMap(model.TCP))
	if n := strings.Count(eps, " : 10."); n != 1500*10 {
		t.Errorf("%s has %d elements, want %d", EndpointsMap(model.TCP), n, 1500*10)
	}
	// A second sync of the same State writes nothing.
	if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
		t.Fatal(err)
	}
	if got := p.LastSyncStats(); !got.Skipped || got.KernelOps != 0 {
		t.Errorf("idle resync wrote %d objects", got.KernelOps)
	}
}

// The periodic resync notices a table changed behind proxyd's back and
// rewrites it, counting one repair: the nf_tables generation moved, so it
// read the table back and found it differs. A commit to another table
// moves the generation too, but the comparison finds nothing and nothing
// is written; with the generation where proxyd's last commit left it,
// nothing is read or written.
func TestKernelResyncRepairsATableChangedOutsideProxyd(t *testing.T) {
	ns := testns.New(t, "nftfix")
	p := newKernelProxier(t, ns)
	st := flowspec.State()
	if err := p.Sync(context.Background(), st, model.Compute(nil, st)); err != nil {
		t.Fatal(err)
	}
	want := ns.Run(t, "nft", "list", "table", "ip", TableName)
	web := PickChain(model.TCP, 3)
	for _, tamper := range [][]string{
		{"nft", "delete", "table", "ip", TableName},
		{"nft", "add", "chain", "ip", TableName, "intruder"},
		{"nft", "flush", "chain", "ip", TableName, web},
		{"nft", "delete", "element", "ip", TableName, EndpointsMap(model.TCP), "{ 10.96.0.10 . 80 . 1 }"},
		{"nft", "delete", "element", "ip", TableName, ServiceIPsMap, "{ 10.96.0.10 . tcp . 80 }"},
		{"nft", "insert", "rule", "ip", TableName, chainNatPrerouting, "ip", "daddr", "10.96.0.10", "drop"},
		{"nft", "add", "element", "ip", TableName, ClusterIPsSet, "{ 10.96.9.9 }"},
	} {
		ns.Run(t, tamper...)
		if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
			t.Fatal(err)
		}
		if got := p.LastSyncStats(); !got.Full || got.DriftRepairs != 1 {
			t.Errorf("after %v the resync was not one full repair: %+v", tamper, got)
		}
		if got := ns.Run(t, "nft", "list", "table", "ip", TableName); nft.CanonicalListing(got) != nft.CanonicalListing(want) {
			t.Errorf("after %v the table was not restored:\n%s", tamper, got)
		}
	}
	ns.Run(t, "nft", "add", "table", "ip", "someone-else")
	if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
		t.Fatal(err)
	}
	if got := p.LastSyncStats(); !got.Skipped || got.DriftRepairs != 0 {
		t.Errorf("another table's commit made proxyd write: %+v", got)
	}
	gen, err := p.conn.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
		t.Fatal(err)
	}
	if got := p.LastSyncStats(); !got.Skipped || got.DriftRepairs != 0 {
		t.Errorf("an untouched table was rewritten: %+v", got)
	}
	if again, err := p.conn.Generation(); err != nil || again != gen {
		t.Errorf("an idle sync committed: generation %d, then %d (%v)", gen, again, err)
	}
}

// A new proxyd (a restart) rewrites the table it finds in place: the base
// chains keep their hooks (the same handles), so a connection whose first
// packet races the commit is NATed by the old rules or the new ones, never
// by neither; and what the cluster lost while no proxyd ran is gone after.
func TestKernelRestartRewritesTheTableInPlace(t *testing.T) {
	ns := testns.New(t, "nftrestart")
	before := flowspec.State()
	if err := newKernelProxier(t, ns).Sync(context.Background(), before, model.Compute(nil, before)); err != nil {
		t.Fatal(err)
	}
	handles := func() string {
		// A table created again gets a new handle (the counter is the
		// family's); its chains would number from 1 again.
		return ns.Run(t, "sh", "-c", "nft -a list table ip "+TableName+" | grep -E '^table|chain (nat|filter)-' | sort")
	}
	baseBefore := handles()

	after := flowspec.State()
	web := model.ServicePortKey{Namespace: "default", Name: "web", Port: "p", Protocol: model.TCP}
	dns := model.ServicePortKey{Namespace: "default", Name: "dns", Port: "p", Protocol: model.UDP}
	delete(after.Services, dns) // deleted while no proxyd ran
	changed := *after.Services[web]
	changed.ClusterEndpoints = changed.ClusterEndpoints[:1]
	after.Services[web] = &changed

	p := newKernelProxier(t, ns)
	if err := p.Sync(context.Background(), after, model.Compute(nil, after)); err != nil {
		t.Fatal(err)
	}
	if s := p.LastSyncStats(); !s.Full {
		t.Errorf("the first sync of a new process was not full: %+v", s)
	}
	if got := handles(); got != baseBefore {
		t.Errorf("the table and its base chains were recreated:\n--- before\n%s\n--- after\n%s", baseBefore, got)
	}
	for _, f := range []model.IPFamily{model.IPv4, model.IPv6} {
		want := Render(after, flowspec.Config(), f).String()
		if got := ns.Run(t, "nft", "list", "table", nftFamily(f).String(), TableName); nft.CanonicalListing(got) != nft.CanonicalListing(want) {
			t.Errorf("%v: the rewritten table differs from the rendering\n--- kernel\n%s\n--- rendering\n%s", f, got, want)
		}
	}
	readBackMatches(t, ns, after, flowspec.Config())
}

// ruleHandles lists the kernel's handles of every rule of proxyd's IPv4
// table, read back over netlink: a new rule always gets a new handle.
func ruleHandles(t *testing.T, ns *testns.NS) []uint64 {
	t.Helper()
	r, err := nft.NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tb, err := r.Table(nft.IP, TableName)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, c := range tb.Chains {
		out = append(out, c.Handles...)
	}
	slices.Sort(out)
	return out
}

// In a table of thousands of services, an endpoint that goes away, one
// that comes back and one replaced by another change elements only — the
// port's dispatch verdict and its entries in the endpoint map — and the
// kernel holds exactly the rules it held before (the same handles): no
// rule is added, so the commit validates none. (Another port already has
// 9 endpoints: a count no port had yet adds its pick chain once.)
func TestKernelEndpointChangeAddsNoRule(t *testing.T) {
	ns := testns.New(t, "nfteps")
	p := newKernelProxier(t, ns)
	snap := bigSnapshot(2000, 10)
	nine := model.NamespacedName{Namespace: "bench", Name: "svc-00007-1"}
	es9 := *snap.Slices[nine]
	es9.Endpoints = es9.Endpoints[1:]
	snap.Slices[nine] = &es9
	var builder model.Builder
	st := builder.Build(snap)
	if err := p.Sync(context.Background(), st, model.Compute(nil, st)); err != nil {
		t.Fatal(err)
	}
	before := ruleHandles(t, ns)
	if len(before) > 20 {
		t.Fatalf("%d rules in a table of 2000 ClusterIP services: the rules grow with the services", len(before))
	}
	name := model.NamespacedName{Namespace: "bench", Name: "svc-01000-1"}
	es := *snap.Slices[name]
	replaced := slices.Clone(es.Endpoints)
	replaced[3].Addresses = []netip.Addr{netip.MustParseAddr("10.200.0.3")}
	for _, eps := range [][]model.SliceEndpoint{es.Endpoints[1:], es.Endpoints, replaced} {
		next := es
		next.Endpoints = eps
		snap.Slices[name] = &next
		prev := st
		st = builder.Build(snap)
		if err := p.Sync(context.Background(), st, model.Compute(prev, st)); err != nil {
			t.Fatal(err)
		}
		if got := p.LastSyncStats(); got.Full || got.KernelOps == 0 {
			t.Fatalf("the endpoint change was written as %+v", got)
		}
		if after := ruleHandles(t, ns); !slices.Equal(after, before) {
			t.Fatalf("the endpoint change added or removed rules: %d before, %d after", len(before), len(after))
		}
		m := ns.Run(t, "nft", "list", "map", "ip", TableName, EndpointsMap(model.TCP))
		if n := strings.Count(m, "10.96.3.232 . 80 . "); n != len(eps) {
			t.Fatalf("the endpoint map has %d elements of the port, want %d", n, len(eps))
		}
		d := ns.Run(t, "nft", "list", "map", "ip", TableName, ServiceIPsMap)
		if want := "10.96.3.232 . tcp . 80 comment \"bench/svc-01000/tcp/http\" : goto " + PickChain(model.TCP, len(eps)); !strings.Contains(d, want) {
			t.Fatalf("service-ips has no %q", want)
		}
	}
	if m := ns.Run(t, "nft", "list", "map", "ip", TableName, EndpointsMap(model.TCP)); !strings.Contains(m, " : 10.200.0.3 . 8080") {
		t.Errorf("the replaced endpoint is not in the map")
	}
}
