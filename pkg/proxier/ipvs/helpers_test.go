package ipvs

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func addr(s string) netip.Addr         { return netip.MustParseAddr(s) }
func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// sp builds a service port on vip:port with the given usable endpoints.
func sp(name string, proto model.Protocol, vip string, port uint16, eps ...string) *model.ServicePort {
	s := &model.ServicePort{Key: model.ServicePortKey{Namespace: "default", Name: name, Port: "p", Protocol: proto},
		ClusterIPs: []netip.Addr{addr(vip)}, Port: port}
	for _, e := range eps {
		ap := addrPort(e)
		ep := model.Endpoint{IP: ap.Addr(), Port: ap.Port(), Ready: true, Serving: true}
		s.Endpoints = append(s.Endpoints, ep)
		s.ClusterEndpoints = append(s.ClusterEndpoints, ep)
	}
	return s
}

func state(sps ...*model.ServicePort) *model.State {
	s := &model.State{Node: model.Node{Name: flowspec.NodeName}, Services: map[model.ServicePortKey]*model.ServicePort{}}
	for _, p := range sps {
		s.Services[p.Key] = p
	}
	return s
}

// rig is a Proxier on fakes.
type rig struct {
	t     *testing.T
	p     *Proxier
	h     *Fake
	links *FakeLinks
	fw    *FakeFirewall
	clock *clocktesting.FakeClock
	last  *model.State
}

func newRig(t *testing.T, opts ...Option) *rig {
	t.Helper()
	r := &rig{t: t, h: NewFake(), links: NewFakeLinks(), fw: &FakeFirewall{}, clock: clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0))}
	base := []Option{WithHandle(r.h), WithLinks(r.links), WithFirewall(r.fw), WithClock(r.clock), WithSysctl(func(string, string) error { return nil }),
		WithLogger(slog.New(slog.DiscardHandler))}
	p, err := New(flowspec.Config(), append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	return r
}

// sync runs Sync with the Diff from the previous State, as the runner would.
func (r *rig) sync(s *model.State) {
	r.t.Helper()
	if err := r.syncErr(s); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) syncErr(s *model.State) error {
	d := model.Compute(r.last, s)
	err := r.p.Sync(context.Background(), s, d)
	if err == nil {
		r.last = s
	}
	return err
}

// dump renders the Fake's kernel table like Table.String, with weights
// and connection counters, so tests assert the kernel's state.
func (r *rig) dump() string { return dumpHandle(r.t, r.h) }

func dumpHandle(t *testing.T, h Handle) string { return readHandle(t, h, nil).String() }

// readHandle reads the IPVS table h holds, with weights; the virtual
// servers on nodeIPs are marked OnNode (the kernel does not say), so that
// the table's VIPs are the addresses proxyd binds.
func readHandle(t *testing.T, h Handle, nodeIPs []netip.Addr) *Table {
	t.Helper()
	tab, err := ReadTable(h, nodeIPs)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

var testConfig = proxier.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}

type netipAddr = netip.Addr

func equalAddrs(a, b []netip.Addr) bool { return slices.Equal(a, b) }
