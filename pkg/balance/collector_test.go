package balance

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
)

var (
	web    = model.ServicePortKey{Namespace: "default", Name: "web", Port: "http", Protocol: model.TCP}
	webVIP = netip.MustParseAddrPort("10.96.0.10:80")
	client = netip.MustParseAddr("10.244.1.100")
)

func podIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}) }

// webState is the web Service with pods 1..n ready, plus a NodePort.
func webState(n int) *model.State {
	var eps []model.Endpoint
	for i := 1; i <= n; i++ {
		eps = append(eps, model.Endpoint{IP: podIP(i), Port: 8080, Ready: true, Serving: true})
	}
	sp := &model.ServicePort{Key: web, ClusterIPs: []netip.Addr{webVIP.Addr()}, Port: 80, NodePort: 30080,
		Endpoints: eps, ClusterEndpoints: eps, ExternalEndpoints: eps}
	return &model.State{Services: map[model.ServicePortKey]*model.ServicePort{web: sp}}
}

// table is a fake conntrack table the collector walks.
type table struct{ entries []conntrack.Entry }

func (t *table) source() Source {
	return func(fn func(*conntrack.Entry) bool) error {
		for i := range t.entries {
			e := t.entries[i]
			if !fn(&e) {
				break
			}
		}
		return nil
	}
}

// connect adds an established connection from client port sport to dst,
// answered by pod i (DNAT), as the kernel would list it.
func (t *table) connect(id uint32, sport uint16, dst netip.AddrPort, pod int) {
	t.entries = append(t.entries, conntrack.Entry{ID: id, Proto: unix.IPPROTO_TCP, TCPState: conntrack.TCPEstablished,
		Orig:  conntrack.Tuple{Src: netip.AddrPortFrom(client, sport), Dst: dst},
		Reply: conntrack.Tuple{Src: netip.AddrPortFrom(podIP(pod), 8080), Dst: netip.AddrPortFrom(client, sport)}})
}

type recorder struct{ events []string }

func (r *recorder) Warn(svc model.NamespacedName, reason, message string) {
	r.events = append(r.events, svc.String()+" "+reason+": "+message)
}

func newTestCollector(t *testing.T, tab *table, cfg Config) (*Collector, *clocktesting.FakeClock, *recorder) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	rec := &recorder{}
	return New(cfg, tab.source(), rec, clk), clk, rec
}

func scan(t *testing.T, c *Collector) Spread {
	t.Helper()
	if err := c.Scan(); err != nil {
		t.Fatal(err)
	}
	sp, _, ok := c.Spread(web.Service())
	if !ok {
		t.Fatal("no spread for the web Service")
	}
	return sp
}

func counts(sp Spread) string {
	var b strings.Builder
	for _, e := range sp.Endpoints {
		fmt.Fprintf(&b, "%v=%d ", e.IP, e.Connections)
	}
	return strings.TrimSpace(b.String())
}

func TestScanCountsOnlyEstablishedConnectionsThatAServiceTranslated(t *testing.T) {
	tab := &table{}
	tab.connect(1, 40001, webVIP, 1)
	tab.connect(2, 40002, webVIP, 1)
	tab.connect(3, 40003, netip.MustParseAddrPort("10.88.0.2:30080"), 2) // through the NodePort
	tab.connect(4, 40004, webVIP, 9)                                     // answered by no endpoint
	tab.connect(5, 40005, netip.MustParseAddrPort("10.96.0.99:80"), 1)   // another destination
	tab.connect(6, 40006, webVIP, 2)
	tab.entries[len(tab.entries)-1].TCPState = conntrack.TCPTimeWait // closed
	tab.entries = append(tab.entries, conntrack.Entry{ID: 7, Proto: unix.IPPROTO_UDP,
		Orig:  conntrack.Tuple{Src: netip.AddrPortFrom(client, 5353), Dst: webVIP},
		Reply: conntrack.Tuple{Src: netip.AddrPortFrom(podIP(3), 8080), Dst: netip.AddrPortFrom(client, 5353)}})
	c, _, _ := newTestCollector(t, tab, Config{})
	s := webState(3)
	c.Programmed(s, model.Compute(nil, s))

	sp := scan(t, c)
	if got, want := counts(sp), "10.244.1.11=2 10.244.1.12=1 10.244.1.13=0"; got != want {
		t.Errorf("per endpoint: %s, want %s", got, want)
	}
	if sp.Total != 3 || sp.Idle != 1 || sp.MaxShare != 2.0/3 {
		t.Errorf("total %d, idle %d, max share %v; want 3, 1, 0.667", sp.Total, sp.Idle, sp.MaxShare)
	}
	if _, entries, _ := c.LastScan(); entries != 7 {
		t.Errorf("walk read %d entries, want 7", entries)
	}
}

func TestAServiceWithoutConnectionsStillShowsItsEndpoints(t *testing.T) {
	c, _, _ := newTestCollector(t, &table{}, Config{})
	s := webState(2)
	c.Programmed(s, model.Compute(nil, s))
	if sp := scan(t, c); counts(sp) != "10.244.1.11=0 10.244.1.12=0" || sp.Idle != 2 {
		t.Errorf("spread %s idle %d", counts(sp), sp.Idle)
	}
}

// scaleUp programs a State with n pods after the one with 3.
func scaleUp(c *Collector, n int) {
	old, next := webState(3), webState(n)
	c.Programmed(next, model.Compute(old, next))
}

func TestLongLivedConnectionsAfterAScaleUpAreReportedPinnedOnce(t *testing.T) {
	tab := &table{}
	for i := range 6 {
		tab.connect(uint32(i+1), uint16(40000+i), webVIP, i%3+1)
	}
	c, clk, rec := newTestCollector(t, tab, Config{PinnedAfter: time.Minute, EventEvery: time.Hour})
	s := webState(3)
	c.Programmed(s, model.Compute(nil, s))
	scan(t, c) // the connections are seen before the new Pods are ready
	clk.Step(10 * time.Second)
	scaleUp(c, 6)

	sp := scan(t, c)
	if sp.Idle != 3 || sp.Pinned != "" {
		t.Fatalf("right after the scale-up: idle %d, pinned %q; want 3 idle, not yet pinned", sp.Idle, sp.Pinned)
	}
	clk.Step(time.Minute)
	sp = scan(t, c)
	if sp.Pinned == "" || !strings.Contains(sp.Pinned, "10.244.1.14, 10.244.1.15, 10.244.1.16") || !strings.Contains(sp.Pinned, "6 of 6") {
		t.Fatalf("a minute later: pinned %q; want the three new endpoints named and 6 of 6 old connections", sp.Pinned)
	}
	if len(rec.events) != 1 || !strings.HasPrefix(rec.events[0], "default/web ConnectionsPinned: 3 ready endpoints") {
		t.Fatalf("events %q, want one ConnectionsPinned", rec.events)
	}
	clk.Step(time.Minute)
	scan(t, c)
	if len(rec.events) != 1 {
		t.Errorf("a second walk posted again: %q", rec.events)
	}
	clk.Step(time.Hour)
	scan(t, c)
	if len(rec.events) != 2 {
		t.Errorf("an hour later, still pinned: %d events, want 2", len(rec.events))
	}
}

func TestShortLivedConnectionsAfterAScaleUpAreNotPinned(t *testing.T) {
	tab := &table{}
	for i := range 6 {
		tab.connect(uint32(i+1), uint16(40000+i), webVIP, i%3+1)
	}
	c, clk, rec := newTestCollector(t, tab, Config{PinnedAfter: time.Minute})
	s := webState(3)
	c.Programmed(s, model.Compute(nil, s))
	scan(t, c)
	scaleUp(c, 6)
	// The old connections close; new ones, all opened after the scale-up,
	// happen to land on the old Pods only.
	tab.entries = nil
	for i := range 6 {
		tab.connect(uint32(i+100), uint16(41000+i), webVIP, i%3+1)
	}
	clk.Step(2 * time.Minute)
	if sp := scan(t, c); sp.Idle != 3 || sp.Pinned != "" {
		t.Errorf("idle %d, pinned %q; want 3 idle and not pinned: no connection predates the new Pods", sp.Idle, sp.Pinned)
	}
	if len(rec.events) != 0 {
		t.Errorf("events %q, want none", rec.events)
	}
}

func TestEndpointsReadyBeforeProxydStartedAreNeverReportedIdleForLong(t *testing.T) {
	tab := &table{}
	tab.connect(1, 40001, webVIP, 1)
	c, clk, rec := newTestCollector(t, tab, Config{PinnedAfter: time.Minute})
	s := webState(3)
	c.Programmed(s, model.Compute(nil, s))
	scan(t, c)
	clk.Step(time.Hour)
	sp := scan(t, c)
	if sp.Pinned != "" || len(rec.events) != 0 {
		t.Errorf("pinned %q, events %q: endpoints ready at start have no known ready time", sp.Pinned, rec.events)
	}
	for _, e := range sp.Endpoints {
		if !e.ReadyAtStart {
			t.Errorf("%v: ReadyAtStart false", e.IP)
		}
	}
}

func TestEventsAreCappedPerMinuteAcrossServices(t *testing.T) {
	l := newEventLimiter(time.Hour)
	now := time.Unix(0, 0)
	allowed := 0
	for i := range 50 {
		if l.allow(model.NamespacedName{Namespace: "ns", Name: fmt.Sprint(i)}, now) {
			allowed++
		}
	}
	if allowed != maxEventsPerMinute {
		t.Errorf("%d Events in one minute, want %d", allowed, maxEventsPerMinute)
	}
	if !l.allow(model.NamespacedName{Namespace: "ns", Name: "49"}, now.Add(time.Minute)) {
		t.Error("a Service refused in a full minute is not allowed a minute later")
	}
}

func TestPerEndpointSeriesOnlyForTheMostImbalancedUnlessAsked(t *testing.T) {
	tab := &table{}
	tab.connect(1, 40001, webVIP, 1)
	tab.connect(2, 40002, webVIP, 1)
	for _, tc := range []struct {
		name string
		cfg  Config
		want int
	}{
		{"the top 5: the imbalanced Service gets its endpoints", Config{TopK: 5}, 3},
		{"no per-endpoint series with TopK 0", Config{}, 0},
		{"every Service's endpoints with EndpointSeries", Config{EndpointSeries: true}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, _ := newTestCollector(t, tab, tc.cfg)
			s := webState(3)
			c.Programmed(s, model.Compute(nil, s))
			scan(t, c)
			reg := prometheus.NewRegistry()
			reg.MustRegister(c)
			n, err := testutil.GatherAndCount(reg, "proxyd_endpoint_established_connections")
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.want {
				t.Errorf("%d per-endpoint series, want %d", n, tc.want)
			}
			want := `
# HELP proxyd_service_established_connections Established TCP connections through this node to the Service's endpoints, at the last conntrack walk
# TYPE proxyd_service_established_connections gauge
proxyd_service_established_connections{namespace="default",service="web"} 2
# HELP proxyd_service_endpoints_without_connections Ready endpoints this node may send the Service's connections to that hold none
# TYPE proxyd_service_endpoints_without_connections gauge
proxyd_service_endpoints_without_connections{namespace="default",service="web"} 2
# HELP proxyd_service_connections_max_endpoint_share The largest fraction of the Service's established connections that one endpoint holds
# TYPE proxyd_service_connections_max_endpoint_share gauge
proxyd_service_connections_max_endpoint_share{namespace="default",service="web"} 1
`
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "proxyd_service_established_connections",
				"proxyd_service_endpoints_without_connections", "proxyd_service_connections_max_endpoint_share"); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestAServiceWithoutConnectionsHasNoSeries(t *testing.T) {
	c, _, _ := newTestCollector(t, &table{}, Config{EndpointSeries: true})
	s := webState(3)
	c.Programmed(s, model.Compute(nil, s))
	scan(t, c)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if n, _ := testutil.GatherAndCount(reg, "proxyd_service_established_connections", "proxyd_endpoint_established_connections"); n != 0 {
		t.Errorf("%d series for a Service without connections, want 0", n)
	}
}

func TestTheFirstWalkFollowsTheFirstProgrammedStateNotTheInterval(t *testing.T) {
	tab := &table{}
	tab.connect(1, 40001, webVIP, 1)
	c, _, _ := newTestCollector(t, tab, Config{Interval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	s := webState(3)
	c.Programmed(s, model.Compute(nil, s))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if at, entries, _ := c.LastScan(); !at.IsZero() && entries == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no walk within 5 s of the first State, with an hour's interval on a clock that does not move")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRefreshWalksOnlyWhenTheLastWalkIsOlderThanAsked(t *testing.T) {
	tab := &table{}
	c, clk, _ := newTestCollector(t, tab, Config{})
	s := webState(3)
	c.Programmed(s, model.Compute(nil, s))
	scan(t, c)
	tab.connect(1, 40001, webVIP, 2)
	if err := c.Refresh(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if sp, _, _ := c.Spread(web.Service()); sp.Total != 0 {
		t.Errorf("a walk younger than 5 s was repeated: %s", counts(sp))
	}
	clk.Step(6 * time.Second)
	if err := c.Refresh(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if sp, _, _ := c.Spread(web.Service()); sp.Total != 1 {
		t.Errorf("an older walk was not repeated: %s", counts(sp))
	}
}

func TestRefreshWalksAtOnceWhenAServiceWasProgrammedSinceTheLastWalk(t *testing.T) {
	c, _, _ := newTestCollector(t, &table{}, Config{})
	empty := &model.State{Services: map[model.ServicePortKey]*model.ServicePort{}}
	c.Programmed(empty, model.Compute(nil, empty))
	if err := c.Scan(); err != nil {
		t.Fatal(err)
	}
	s := webState(2)
	c.Programmed(s, model.Compute(empty, s))
	if err := c.Refresh(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c.Spread(web.Service()); !ok {
		t.Error("a Service programmed after a fresh walk is unknown to Refresh's view")
	}
}

// A caller whose State changes in place hands the collector a getter of
// copies: the walk follows the copy it returns, not the State Programmed
// was given.
func TestAWalkReadsTheStateFromTheGetterWhenOneIsSet(t *testing.T) {
	tab := &table{}
	tab.connect(1, 40001, webVIP, 4)
	c, _, _ := newTestCollector(t, tab, Config{})
	live := webState(3)
	copied := webState(4)
	c.ReadStateFrom(func() *model.State { return copied })
	c.Programmed(live, model.Compute(nil, live))

	if got, want := counts(scan(t, c)), "10.244.1.11=0 10.244.1.12=0 10.244.1.13=0 10.244.1.14=1"; got != want {
		t.Errorf("per endpoint: %s, want %s (the getter's State, with pod 4)", got, want)
	}
}
