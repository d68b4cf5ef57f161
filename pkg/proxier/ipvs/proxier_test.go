package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	mobyipvs "github.com/moby/ipvs"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

var _ proxier.Backend = (*Proxier)(nil)
var _ proxier.StatsReporter = (*Proxier)(nil)

func TestSyncCreatesTheRenderedTable(t *testing.T) {
	r := newRig(t)
	s := flowspec.State()
	r.sync(s)
	if got, want := r.dump(), stripComments(Render(s, "rr").String()); got != want {
		t.Fatalf("kernel table:\n%s\nwant:\n%s", got, want)
	}
	addrs, _ := r.links.Addrs(LinkName)
	// The ClusterIPs and the external and load-balancer IPs, not the
	// node's address.
	external := []netip.Addr{flowspec.ExternalIP, flowspec.RangedLBIP, flowspec.RangedEmptyLBIP}
	if want := len(s.ClusterIPs(model.IPv4)) + len(s.ClusterIPs(model.IPv6)) + len(external); len(addrs) != want ||
		slices.ContainsFunc(external, func(a netip.Addr) bool { return !slices.Contains(addrs, a) }) || slices.Contains(addrs, flowspec.NodeIP) {
		t.Fatalf("bound %v, want the %d ClusterIPs and %v", addrs, want-len(external), external)
	}
	if !r.fw.Current().Equal(RenderNetfilter(Render(s, "rr"), flowspec.Config())) {
		t.Fatal("firewall does not hold the rendered ruleset")
	}
	if st := r.p.LastSyncStats(); !st.Full || st.KernelOps == 0 {
		t.Fatalf("stats %+v", st)
	}
	if r.p.Mode() != "ipvs" {
		t.Fatal(r.p.Mode())
	}
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.SplitAfter(s, "\n") {
		if i := strings.Index(l, "  # "); i >= 0 {
			l = l[:i] + "\n"
		}
		out = append(out, l)
	}
	return strings.Join(out, "")
}

func TestSyncWritesOnlyTheDifference(t *testing.T) {
	r := newRig(t)
	web := sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080")
	dns := sp("dns", model.UDP, "10.96.0.20", 53, "10.244.1.11:53")
	r.sync(state(web, dns))

	r.sync(state(web, dns))
	if st := r.p.LastSyncStats(); !st.Skipped || st.KernelOps != 0 {
		t.Fatalf("unchanged state: %+v, want nothing written", st)
	}

	web2 := sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080", "10.244.1.13:8080")
	r.sync(state(web2, dns))
	if st := r.p.LastSyncStats(); st.Full || st.KernelOps != 2 { // one real server + the firewall's hairpin set
		t.Fatalf("endpoint added: %+v, want 2 incremental ops", st)
	}
	want := "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 1\n  -> 10.244.1.12:8080 Masq 1\n  -> 10.244.1.13:8080 Masq 1\n" +
		"UDP  10.96.0.20:53 rr\n  -> 10.244.1.11:53 Masq 1\n"
	if got := r.dump(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestSyncUpdates(t *testing.T) {
	web := sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080")
	tests := []struct {
		name string
		opts []Option
		next *model.State
		want string
	}{
		{
			name: "an endpoint removed is deleted when IPVS counts no connection on it",
			next: state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.12:8080")),
			want: "TCP  10.96.0.10:80 rr\n  -> 10.244.1.12:8080 Masq 1\n",
		},
		{
			name: "an endpoint added gets a real server of weight 1",
			next: state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080", "10.244.1.14:8080")),
			want: "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 1\n  -> 10.244.1.12:8080 Masq 1\n  -> 10.244.1.14:8080 Masq 1\n",
		},
		{
			name: "session affinity makes the virtual server persistent",
			next: func() *model.State {
				w := sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080")
				w.AffinitySeconds = 600
				return state(w)
			}(),
			want: "TCP  10.96.0.10:80 rr persistent 600\n  -> 10.244.1.11:8080 Masq 1\n  -> 10.244.1.12:8080 Masq 1\n",
		},
		{
			name: "a new port on the same ClusterIP is a new virtual server",
			next: state(web, sp("web-tls", model.TCP, "10.96.0.10", 443, "10.244.1.11:8443")),
			want: "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 1\n  -> 10.244.1.12:8080 Masq 1\nTCP  10.96.0.10:443 rr\n  -> 10.244.1.11:8443 Masq 1\n",
		},
		{
			name: "a Service deleted takes its virtual server and address with it",
			next: state(sp("dns", model.UDP, "10.96.0.20", 53, "10.244.1.11:53")),
			want: "UDP  10.96.0.20:53 rr\n  -> 10.244.1.11:53 Masq 1\n",
		},
		{
			name: "the last endpoint removed leaves the virtual server, which IPVS makes reject",
			next: state(sp("web", model.TCP, "10.96.0.10", 80)),
			want: "TCP  10.96.0.10:80 rr\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.opts...)
			r.sync(state(web))
			r.sync(tc.next)
			if got := r.dump(); got != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
			if got, want := r.fw.Current(), RenderNetfilter(Render(tc.next, "rr"), flowspec.Config()); !got.Equal(want) {
				t.Fatalf("firewall:\n%s\nwant:\n%s", got, want)
			}
			bound, _ := r.links.Addrs(LinkName)
			if vips := Render(tc.next, "rr").VIPs(); !equalAddrs(bound, vips) {
				t.Fatalf("bound %v, want %v", bound, vips)
			}
		})
	}
}

func TestSchedulerChangeUpdatesEveryVirtualServer(t *testing.T) {
	h := NewFake()
	links, fw := NewFakeLinks(), &FakeFirewall{}
	s := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080"), sp("dns", model.UDP, "10.96.0.20", 53, "10.244.1.11:53"))
	for _, sched := range []string{"rr", "sh"} {
		p, err := New(testConfig, WithHandle(h), WithLinks(links), WithFirewall(fw), WithScheduler(sched), WithSysctl(func(string, string) error { return nil }))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Sync(context.Background(), s, model.Compute(nil, s)); err != nil {
			t.Fatal(err)
		}
	}
	want := "TCP  10.96.0.10:80 sh\n  -> 10.244.1.11:8080 Masq 1\nUDP  10.96.0.20:53 sh\n  -> 10.244.1.11:53 Masq 1\n"
	if got := dumpHandle(t, h); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestSchedulerNotInTheKernelIsAClearError(t *testing.T) {
	r := &rig{t: t, h: NewFake("rr"), links: NewFakeLinks(), fw: &FakeFirewall{}}
	p, err := New(testConfig, WithHandle(r.h), WithLinks(r.links), WithFirewall(r.fw), WithScheduler("mh"), WithSysctl(func(string, string) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	err = r.syncErr(state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080")))
	if err == nil || !strings.Contains(err.Error(), `ipvs scheduler "mh" is not available`) || !strings.Contains(err.Error(), "ip_vs_mh") {
		t.Fatalf("err = %v", err)
	}
	if _, err := New(testConfig, WithHandle(r.h), WithScheduler("fifo")); err == nil || !strings.Contains(err.Error(), `unknown ipvs scheduler "fifo"`) {
		t.Fatalf("unknown scheduler: %v", err)
	}
}

func TestSyncNeverTouchesForeignVirtualServers(t *testing.T) {
	r := newRig(t)
	foreign := svc4("192.168.50.1", 80, "wlc")
	if err := r.h.NewService(foreign); err != nil {
		t.Fatal(err)
	}
	if err := r.h.NewDestination(foreign, dst("192.168.50.10:80", 5)); err != nil {
		t.Fatal(err)
	}
	fw := &mobyipvs.Service{FWMark: 7, SchedName: "rr", AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
	if err := r.h.NewService(fw); err != nil {
		t.Fatal(err)
	}
	r.sync(state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080")))
	r.sync(state())
	if err := r.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	svcs, _ := r.h.GetServices()
	if len(svcs) != 2 {
		t.Fatalf("foreign services after sync and cleanup: %d, want both kept", len(svcs))
	}
	if got := r.dump(); got != "TCP  192.168.50.1:80 wlc\n  -> 192.168.50.10:80 Masq 5\n" {
		t.Fatalf("foreign virtual server changed:\n%s", got)
	}
}

func TestSyncTakesBackVirtualServersOnItsInterface(t *testing.T) {
	// A previous proxyd left 10.96.0.99 bound with a virtual server; this
	// one does not want it: it is proxyd's, so it goes.
	r := newRig(t)
	if err := r.links.EnsureLink(LinkName); err != nil {
		t.Fatal(err)
	}
	_ = r.links.AddAddr(LinkName, addr("10.96.0.99"))
	_ = r.h.NewService(svc4("10.96.0.99", 80, "rr"))
	r.sync(state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080")))
	if got := r.dump(); got != "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 1\n" {
		t.Fatalf("got\n%s", got)
	}
	if bound, _ := r.links.Addrs(LinkName); !equalAddrs(bound, []netipAddr{addr("10.96.0.10")}) {
		t.Fatalf("bound %v", bound)
	}
}

func TestFailedSyncIsRepairedByTheNext(t *testing.T) {
	r := newRig(t)
	s := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080"))
	r.fw.Err = errors.New("netlink: boom")
	if err := r.syncErr(s); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v", err)
	}
	// Someone deletes our real server behind our back meanwhile.
	svcs, _ := r.h.GetServices()
	_ = r.h.DelDestination(svcs[0], dst("10.244.1.11:8080", 1))
	r.sync(s)
	if st := r.p.LastSyncStats(); !st.Full {
		t.Fatalf("sync after a failure was not full: %+v", st)
	}
	if got := r.dump(); got != "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 1\n" {
		t.Fatalf("got\n%s", got)
	}
	if r.fw.Current() == nil {
		t.Fatal("firewall not written")
	}
}

func TestCleanup(t *testing.T) {
	r := newRig(t)
	r.sync(flowspec.State())
	if err := r.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := r.dump(); got != "" {
		t.Fatalf("left:\n%s", got)
	}
	if r.links.Exists(LinkName) || r.fw.Current() != nil {
		t.Fatal("interface or firewall table left")
	}
	// Twice, and on a fresh backend that never synced: nothing to do.
	if err := r.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(context.Background(), WithHandle(NewFake()), WithLinks(NewFakeLinks()), WithFirewall(&FakeFirewall{})); err != nil {
		t.Fatal(err)
	}
}

func TestCleanupOfAnotherProcessFindsVirtualServersByInterface(t *testing.T) {
	r := newRig(t)
	r.sync(flowspec.State())
	if err := Cleanup(context.Background(), WithHandle(r.h), WithLinks(r.links), WithFirewall(r.fw)); err != nil {
		t.Fatal(err)
	}
	if got := r.dump(); got != "" {
		t.Fatalf("left:\n%s", got)
	}
}

func TestCleanupWithoutIPVSIsNotAnError(t *testing.T) {
	p := build(proxier.Config{}, []Option{WithLinks(NewFakeLinks()), WithFirewall(&FakeFirewall{})})
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestNewWithoutIPVSNamesTheModule(t *testing.T) {
	if checkIPVS() == nil {
		t.Skip("this kernel has IPVS")
	}
	_, err := New(testConfig, WithLinks(NewFakeLinks()), WithFirewall(&FakeFirewall{}))
	if !errors.Is(err, ErrIPVSUnavailable) || !strings.HasPrefix(err.Error(), "ipvs mode needs the ip_vs kernel module: ") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
}

func TestMissingDummyModuleIsAClearError(t *testing.T) {
	r := newRig(t)
	r.links.Unsupported = true
	err := r.syncErr(flowspec.State())
	if err == nil || !strings.Contains(err.Error(), "proxyd-ipvs0") {
		t.Fatalf("err = %v", err)
	}
}

func TestSysctlsAreBestEffort(t *testing.T) {
	var set []string
	r := newRig(t, WithSysctl(func(p, v string) error {
		set = append(set, p+"="+v)
		return errors.New("read-only file system")
	}))
	r.sync(flowspec.State())
	r.sync(flowspec.State())
	if len(set) != len(sysctls) || set[0] != "net/ipv4/vs/conntrack=1" {
		t.Fatalf("sysctls set: %v", set)
	}
}
