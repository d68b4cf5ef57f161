package nftables

import (
	"context"
	"reflect"
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
	if got := p.LastSyncStats(); !got.Full || got.ChainCount < 1500 {
		t.Errorf("stats = %+v", got)
	}
	out := ns.Run(t, "nft", "list", "map", "ip", TableName, ServiceIPsMap)
	if n := strings.Count(out, "goto svc-"); n != 1500 {
		t.Errorf("service-ips has %d elements, want 1500", n)
	}
	// A second sync of the same State writes nothing.
	if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
		t.Fatal(err)
	}
	if got := p.LastSyncStats(); !got.Skipped || got.KernelOps != 0 {
		t.Errorf("idle resync wrote %d objects", got.KernelOps)
	}
}

// The periodic resync notices a table changed behind proxyd's back (one
// table dump, no chain listing) and rewrites it; otherwise it writes
// nothing.
func TestKernelResyncRepairsATableChangedOutsideProxyd(t *testing.T) {
	ns := testns.New(t, "nftfix")
	p := newKernelProxier(t, ns)
	st := flowspec.State()
	if err := p.Sync(context.Background(), st, model.Compute(nil, st)); err != nil {
		t.Fatal(err)
	}
	want := ns.Run(t, "nft", "list", "table", "ip", TableName)
	for _, tamper := range [][]string{
		{"nft", "delete", "table", "ip", TableName},
		{"nft", "add", "chain", "ip", TableName, "intruder"},
	} {
		ns.Run(t, tamper...)
		if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
			t.Fatal(err)
		}
		if got := p.LastSyncStats(); !got.Full {
			t.Errorf("after %v the resync was not a full rewrite: %+v", tamper, got)
		}
		if got := ns.Run(t, "nft", "list", "table", "ip", TableName); nft.CanonicalListing(got) != nft.CanonicalListing(want) {
			t.Errorf("after %v the table was not restored:\n%s", tamper, got)
		}
	}
	if err := p.Sync(context.Background(), st, model.Diff{}); err != nil {
		t.Fatal(err)
	}
	if got := p.LastSyncStats(); !got.Skipped {
		t.Errorf("an untouched table was rewritten: %+v", got)
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
