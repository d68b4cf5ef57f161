package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	mobyipvs "github.com/moby/ipvs"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// driftState is what the drift tests program: a Service of two endpoints
// and one of one.
func driftState() *model.State {
	s := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.2.12:8080"),
		sp("db", model.TCP, "10.96.0.11", 5432, "10.244.1.13:5432"))
	s.ServiceCIDRs = prefixes("10.96.0.0/16")
	return s
}

// TestDriftRepair changes the kernel behind the Proxier's back after a
// Sync, as another agent would, and checks that the next periodic Sync
// puts it back, counts each change once, and that the Sync after writes
// nothing.
func TestDriftRepair(t *testing.T) {
	web := toService(&VirtualServer{VSKey: VSKey{Addr: addr("10.96.0.10"), Protocol: model.TCP, Port: 80}, Scheduler: DefaultScheduler})
	pod1 := toDest(RealServer{Addr: addrPort("10.244.1.11:8080"), Weight: 1})
	for _, c := range []struct {
		name    string
		tamper  func(t *testing.T, r *rig)
		repairs int
	}{
		{"nothing changed: nothing repaired", func(*testing.T, *rig) {}, 0},
		{"a virtual server deleted is added back", func(t *testing.T, r *rig) {
			must(t, r.h.DelService(web))
		}, 1},
		{"a real server deleted is added back", func(t *testing.T, r *rig) {
			must(t, r.h.DelDestination(web, pod1))
		}, 1},
		{"a weight changed is set back", func(t *testing.T, r *rig) {
			d := *pod1
			d.Weight = 0
			must(t, r.h.UpdateDestination(web, &d))
		}, 1},
		{"a scheduler changed is set back", func(t *testing.T, r *rig) {
			s := *web
			s.SchedName = "wrr"
			must(t, r.h.UpdateService(&s))
		}, 1},
		{"a real server added by someone else is removed", func(t *testing.T, r *rig) {
			must(t, r.h.NewDestination(web, toDest(RealServer{Addr: addrPort("10.244.9.9:8080"), Weight: 1})))
		}, 1},
		{"a virtual server added on proxyd's address is removed", func(t *testing.T, r *rig) {
			s := *web
			s.Port = 9999
			must(t, r.h.NewService(&s))
		}, 1},
		{"an address taken off the interface is bound again", func(t *testing.T, r *rig) {
			must(t, r.links.DelAddr(LinkName, addr("10.96.0.11")))
		}, 1},
		{"the nftables table deleted is written again", func(t *testing.T, r *rig) {
			r.fw.Commit(nil)
		}, 1},
		{"the nftables table flushed is written again", func(t *testing.T, r *rig) {
			tab := r.fw.Current().Table()
			for _, c := range tab.Chains {
				c.Rules = nil
			}
			r.fw.Commit(tab)
		}, 1},
		{"another table committed: the generation moves, proxyd's table is intact", func(t *testing.T, r *rig) {
			r.fw.Commit(r.fw.Current().Table())
		}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			s := driftState()
			r.sync(s)
			want := r.dump()
			wantRules := r.fw.Current().String()
			rules := func() string {
				tab, err := r.fw.Read()
				if err != nil || tab == nil {
					return fmt.Sprintf("no table (%v)", err)
				}
				return tab.String()
			}
			c.tamper(t, r)
			r.sync(s) // the periodic Sync: nothing changed in the API
			st := r.p.LastSyncStats()
			if st.DriftRepairs != c.repairs {
				t.Errorf("DriftRepairs = %d, want %d", st.DriftRepairs, c.repairs)
			}
			if (st.KernelOps == 0) != (c.repairs == 0) {
				t.Errorf("%d kernel writes for %d repairs", st.KernelOps, c.repairs)
			}
			if got := r.dump(); got != want {
				t.Errorf("IPVS after the repair:\n%s\nwant:\n%s", got, want)
			}
			if got, _ := r.links.Addrs(LinkName); !equalAddrs(got, []netipAddr{addr("10.96.0.10"), addr("10.96.0.11")}) {
				t.Errorf("addresses after the repair: %v", got)
			}
			if got := rules(); got != wantRules {
				t.Errorf("nftables table after the repair:\n%s\nwant:\n%s", got, wantRules)
			}
			r.sync(s)
			if st := r.p.LastSyncStats(); st.KernelOps != 0 || st.DriftRepairs != 0 {
				t.Errorf("the Sync after the repair: %+v, want no writes and no repairs", st)
			}
		})
	}
}

// TestDriftRepairNotProxydsOwnChanges checks that proxyd's own changes,
// a draining real server and a first Sync over leftovers are not counted
// as drift.
func TestDriftRepairNotProxydsOwnChanges(t *testing.T) {
	r := newRig(t)
	r.h.Conns = func(ServiceID, netip.AddrPort) (int, int) { return 1, 0 } // so removed endpoints drain
	must(t, r.h.NewService(toService(&VirtualServer{VSKey: VSKey{Addr: addr("10.96.0.10"), Protocol: model.TCP, Port: 81}, Scheduler: DefaultScheduler})))
	must(t, r.links.EnsureLink(LinkName))
	must(t, r.links.AddAddr(LinkName, addr("10.96.0.10")))
	s1 := driftState()
	r.sync(s1)
	if n := r.p.LastSyncStats().DriftRepairs; n != 0 {
		t.Errorf("a first Sync over a previous run's leftovers counted %d repairs", n)
	}
	s2 := state(sp("web", model.TCP, "10.96.0.10", 80, "10.244.1.11:8080"), sp("api", model.TCP, "10.96.0.12", 443, "10.244.1.14:443"))
	s2.ServiceCIDRs = s1.ServiceCIDRs
	r.sync(s2)
	if st := r.p.LastSyncStats(); st.DriftRepairs != 0 || st.KernelOps == 0 {
		t.Errorf("proxyd's own changes: %+v, want writes and no repairs", st)
	}
	if r.p.Draining() != 1 {
		t.Fatalf("%d real servers draining, want 1", r.p.Draining())
	}
	r.sync(s2)
	if st := r.p.LastSyncStats(); st.DriftRepairs != 0 || st.KernelOps != 0 {
		t.Errorf("a periodic Sync with a real server draining at weight 0: %+v, want nothing", st)
	}
}

// refusingHandle is the kernel's IPVS refusing every real server at one
// address with EINVAL. proxyd renders nothing IPVS is known to refuse for
// one virtual server alone, so a test of containment has to inject it.
type refusingHandle struct {
	*Fake
	refuse netip.Addr
}

func (h refusingHandle) NewDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	if destAddr(d).Addr() == h.refuse {
		return syscall.EINVAL
	}
	return h.Fake.NewDestination(s, d)
}

// TestRefusedVirtualServerStopsNoOther checks containment: a virtual
// server the kernel refuses is reported as a RefusedError naming its
// service port, while every other Service, the addresses and the nftables
// table are written.
func TestRefusedVirtualServerStopsNoOther(t *testing.T) {
	r := newRig(t, WithHandle(refusingHandle{NewFake(), addr("10.244.9.9")}))
	s := driftState()
	bad := sp("bad", model.TCP, "10.96.0.9", 80, "10.244.9.9:80")
	s.Services[bad.Key] = bad
	err := r.syncErr(s)
	var re *proxier.RefusedError
	if !errors.As(err, &re) || len(re.Ports) != 1 || re.Ports[0] != bad.Key || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Sync: %v, want a RefusedError for %s wrapping EINVAL", err, bad.Key)
	}
	got := dumpHandle(t, r.p.handle)
	for _, want := range []string{"TCP  10.96.0.10:80 rr", "-> 10.244.2.12:8080 Masq 1", "TCP  10.96.0.11:5432 rr", "-> 10.244.1.13:5432 Masq 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("IPVS lacks %q:\n%s", want, got)
		}
	}
	if as, _ := r.links.Addrs(LinkName); len(as) != 3 {
		t.Errorf("addresses bound: %v, want all three", as)
	}
	if r.fw.Current() == nil {
		t.Error("the nftables table was not written")
	}
}

// TestRefusedFirewallNarrowed checks containment of the nftables table: a
// table the kernel refuses for one Service's rules is written without
// them, and the RefusedError names that service port only.
func TestRefusedFirewallNarrowed(t *testing.T) {
	r := newRig(t)
	s := driftState()
	refusal := errors.New("netlink receive: invalid argument")
	r.fw.Refuse = func(rs *Ruleset) error {
		for _, c := range rs.ClusterIPs {
			if c.Addr == addr("10.96.0.11") {
				return refusal
			}
		}
		return nil
	}
	err := r.syncErr(s)
	var re *proxier.RefusedError
	if !errors.As(err, &re) || len(re.Ports) != 1 || re.Ports[0].Name != "db" || !errors.Is(err, refusal) {
		t.Fatalf("Sync: %v, want a RefusedError for default/db", err)
	}
	cur := r.fw.Current()
	if cur == nil || len(cur.ClusterIPs) != 1 || cur.ClusterIPs[0].Addr != addr("10.96.0.10") {
		t.Errorf("table in place: %v, want web's rules only", cur)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
