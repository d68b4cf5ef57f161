package ipvs

import (
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"testing"

	"github.com/proxyd/proxyd/internal/testenv"
	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// testNetns creates a network namespace pxd-ipvs-<pid>-<name> for a test that
// needs a real kernel, and deletes it afterwards. The root namespace is
// never touched. It skips unless running as root with ip(8) available.
func testNetns(t *testing.T, name string) string {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "ip")
	ns := fmt.Sprintf("pxd-ipvs-%d-%s", os.Getpid(), name)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		testenv.Skipf(t, "cannot create netns %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", ns, err, out)
		}
	})
	return ns
}

func nftList(t *testing.T, ns string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", TableName).CombinedOutput()
	return string(out), err
}

func TestNftablesTableInANetns(t *testing.T) {
	testenv.NeedTool(t, "nft")
	ns := testNetns(t, "nft")
	fw := &nftFirewall{netnsPath: "/run/netns/" + ns}
	if err := fw.Delete(); err != nil {
		t.Fatalf("Delete with no table: %v", err)
	}
	tab := Render(flowspec.State(), "rr")
	r := RenderNetfilter(tab, flowspec.Config())
	for range 2 { // the second Apply replaces the first
		if err := fw.Apply(r); err != nil {
			t.Fatal(err)
		}
	}
	wantKernelLists(t, ns, r)
	// The flow spec holds on the table the kernel holds, read back, with
	// the rendered IPVS table (this kernel has no ip_vs; the VM test runs
	// the same on the IPVS table read back too).
	back, err := fw.Read()
	if err != nil {
		t.Fatal(err)
	}
	tr := TracerOver(tab, back)
	flowspec.Run(t, tr)
	flowspec.RunExternal(t, tr)
	flowspec.RunAffinity(t, tr)
	// The dual-stack external state: IPv6 DNAT, fib and drop rules.
	ext := Render(extState(), "rr")
	r = RenderNetfilter(ext, flowspec.Config())
	if err := fw.Apply(r); err != nil {
		t.Fatal(err)
	}
	wantKernelLists(t, ns, r) // the external state
	if err := fw.Delete(); err != nil {
		t.Fatal(err)
	}
	if out, err := nftList(t, ns); err == nil {
		t.Fatalf("table still there after Delete:\n%s", out)
	}
}

func TestNftablesNodeServersReadBack(t *testing.T) {
	testenv.NeedTool(t, "nft")
	ns := testNetns(t, "nftnode")
	fw := &nftFirewall{netnsPath: "/run/netns/" + ns}
	if got, err := fw.NodeServers(); err != nil || len(got) != 0 {
		t.Fatalf("NodeServers without a table: %v, %v", got, err)
	}
	s := flowspec.State()
	tab := Render(s, "rr")
	r := RenderNetfilter(tab, flowspec.Config())
	if err := fw.Apply(r); err != nil {
		t.Fatal(err)
	}
	got, err := fw.NodeServers()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b Tuple) int { return VSKey(a).Compare(VSKey(b)) })
	if !slices.Equal(got, r.NodeServers) || len(got) != 6 { // the six NodePorts of the flow spec
		t.Fatalf("node servers read back %v, want %v", got, r.NodeServers)
	}
	if err := fw.Delete(); err != nil {
		t.Fatal(err)
	}
}

// The kernel takes the guard's interval sets of both families, with a
// single-address element (the load-balancer IP the node uses) and ranges
// that nested in the model, and lists them as rendered.
func TestNftablesSourceGuardsInANetns(t *testing.T) {
	testenv.NeedTool(t, "nft")
	ns := testNetns(t, "nftguard")
	fw := &nftFirewall{netnsPath: "/run/netns/" + ns}
	p := lbPort(prefixes("10.88.0.0/16", "10.88.1.0/24", "192.0.2.0/28", "2001:db8:1::/48", "2001:db8:1:2::/64"), "192.0.2.20", "2001:db8::20")
	p.ClusterIPs = append(p.ClusterIPs, addr("fd00:10:96::84"))
	s := lbState(p)
	s.Node.IPs = append(s.Node.IPs, addr("2001:db8:1::2"))
	r := RenderNetfilter(Render(s, "rr"), flowspec.Config())
	if len(r.SourceGuards) != 2 || len(r.SourceGuards[0].Sources) != 3 || len(r.SourceGuards[1].Sources) != 2 {
		t.Fatalf("guards %+v", r.SourceGuards)
	}
	if err := fw.Apply(r); err != nil {
		t.Fatal(err)
	}
	wantKernelLists(t, ns, r)
	if err := fw.Delete(); err != nil {
		t.Fatal(err)
	}
}

// wantKernelLists checks that nft lists the table in ns exactly as r
// prints it, that nft itself loads that text into the same listing, and
// that the table reads back over netlink as r renders it.
func wantKernelLists(t *testing.T, ns string, r *Ruleset) {
	t.Helper()
	got, err := nftList(t, ns)
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, got)
	}
	if nft.CanonicalListing(got) != nft.CanonicalListing(r.String()) {
		t.Errorf("kernel table differs from the rendered text\nkernel:\n%s\nrendered:\n%s", got, r.String())
	}
	ref := testns.New(t, "ipvsref")
	if out, err := ref.Try("sh", "-c", "nft -f - <<'EOF'\n"+r.String()+"EOF\n"); err != nil {
		t.Fatalf("nft -f of the rendering: %v: %s", err, out)
	}
	if byNft := ref.Run(t, "nft", "list", "table", "inet", TableName); nft.CanonicalListing(byNft) != nft.CanonicalListing(got) {
		t.Errorf("the netlink-written table lists differently from the nft-written one\nnetlink:\n%s\nnft:\n%s", got, byNft)
	}
	back, err := (&nftFirewall{netnsPath: "/run/netns/" + ns}).Read()
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if !reflect.DeepEqual(back.Canonical(), r.Table().Canonical()) {
		t.Errorf("read back\n%s\nrendered\n%s", back.Canonical(), r.Table().Canonical())
	}
}

// TestNftablesTableOfAThousandServices writes the table of 1000 Services
// of 10 endpoints (10,000 hairpin elements): one batch larger than the
// default netlink socket limit, which failed with "message too long"
// before the socket's limits were raised, and reads it back intact.
func TestNftablesTableOfAThousandServices(t *testing.T) {
	ns := testNetns(t, "nftbig")
	fw := &nftFirewall{netnsPath: "/run/netns/" + ns}
	var sps []*model.ServicePort
	for i := range 1000 {
		var eps []string
		for j := range 10 {
			eps = append(eps, fmt.Sprintf("10.244.%d.%d:%d", i>>8, i&0xff, 8000+j))
		}
		sps = append(sps, sp(fmt.Sprintf("s%04d", i), model.TCP, fmt.Sprintf("10.96.%d.%d", i>>8, i&0xff), 80, eps...))
	}
	r := RenderNetfilter(Render(state(sps...), "rr"), flowspec.Config())
	if err := fw.Apply(r); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Delete() })
	back, err := fw.Read()
	if err != nil {
		t.Fatal(err)
	}
	if d := nft.Drift(back, r.Table()); len(d) > 0 {
		t.Errorf("the table read back differs from the one written: %v", d)
	}
}
