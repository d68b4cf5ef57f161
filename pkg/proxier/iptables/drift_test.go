package iptables

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// foreign applies restore text as another agent would: with noflush
// false, every chain of the tables it names is flushed and deleted first
// (a firewall reload).
func (k *fakeKernel) foreign(t *testing.T, text string, noflush bool) {
	t.Helper()
	if err := k.restore([]byte(text), noflush); err != nil {
		t.Fatal(err)
	}
	k.gen++
}

// TestDriftIsRepairedByTheNextSync changes proxyd's rules behind its back
// in each way issue 11 lists; the next Sync finds it, rewrites the family
// in full, counts the repair, and the one after writes nothing.
func TestDriftIsRepairedByTheNextSync(t *testing.T) {
	cfg := flowspec.Config()
	s := flowspec.State()
	for _, tc := range []struct {
		name  string
		drift func(t *testing.T, k *fakeKernel)
		found string // in the log line's findings
	}{
		{"a firewall reload flushes and deletes every chain of nat, filter and mangle", func(t *testing.T, k *fakeKernel) {
			k.foreign(t, "*nat\nCOMMIT\n*filter\nCOMMIT\n*mangle\nCOMMIT\n", false)
		}, "nat chain PROXYD-SERVICES is gone"},
		{"one proxyd chain flushed", func(t *testing.T, k *fakeKernel) {
			k.foreign(t, "*nat\n:"+svcChain(webKey)+" - [0:0]\nCOMMIT\n", true)
		}, "holds 0 rules"},
		{"a rule inserted by someone else into a proxyd chain", func(t *testing.T, k *fakeKernel) {
			if err := k.Insert(tableNAT, ChainServices, 1, "-d", flowspec.WebVIP.String()+"/32", "-j", "RETURN"); err != nil {
				t.Fatal(err)
			}
		}, "nat chain PROXYD-SERVICES holds"},
		{"the jumps from the built-in chains removed", func(t *testing.T, k *fakeKernel) {
			for _, j := range jumpRules {
				if err := k.Delete(j.table, j.chain, j.spec...); err != nil {
					t.Fatal(err)
				}
			}
		}, "the jump from nat PREROUTING to PROXYD-SERVICES is gone"},
		{"a chain named like proxyd's added", func(t *testing.T, k *fakeKernel) {
			k.foreign(t, "*filter\n:PROXYD-IMPOSTOR - [0:0]\nCOMMIT\n", true)
		}, "filter chain PROXYD-IMPOSTOR is not one proxyd wrote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTestProxier(t, cfg)
			tp.sync(t, s)
			k := tp.kernels[model.IPv4]
			tc.drift(t, k)
			found, err := tp.fams[0].verify(context.Background())
			if err != nil || !slices.ContainsFunc(found, func(f string) bool { return strings.Contains(f, tc.found) }) {
				t.Errorf("verify found %q (%v), want %q among them", found, err, tc.found)
			}
			st := tp.sync(t, s)
			if !st.Full || st.DriftRepairs != 1 {
				t.Errorf("stats %+v, want one repair by a full write", st)
			}
			tp.wantKernelMatchesFullWrite(t, cfg, s)
			writes := len(k.writes)
			if st := tp.sync(t, s); st.Full || !st.Skipped || st.DriftRepairs != 0 || len(k.writes) != writes {
				t.Errorf("the sync after the repair: %+v, %d writes; want nothing written", st, len(k.writes)-writes)
			}
		})
	}
}

func TestAForeignChangeElsewhereIsCheckedOnceAndWritesNothing(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	tp.sync(t, flowspec.State())
	k := tp.kernels[model.IPv4]
	k.foreign(t, "*nat\n:KUBE-SOMETHING - [0:0]\n-A KUBE-SOMETHING -j RETURN\nCOMMIT\n*filter\n-A INPUT -s 192.0.2.9/32 -j DROP\nCOMMIT\n", true)
	writes := len(k.writes)
	for range 3 {
		if st := tp.sync(t, flowspec.State()); st.Full || st.DriftRepairs != 0 {
			t.Errorf("stats %+v after a change that is not proxyd's", st)
		}
	}
	if len(k.writes) != writes {
		t.Errorf("%d writes, want none", len(k.writes)-writes)
	}
	if !tp.fams[0].markOK || tp.fams[0].mark != (mark{k.gen}) {
		t.Error("the checked tables' mark was not recorded, so every sync would list them again")
	}
}

// saveCounter counts listings, the costly part of a drift check.
type saveCounter struct {
	*fakeKernel
	saves int
}

func (c *saveCounter) Save(ctx context.Context, table string) ([]byte, error) {
	c.saves++
	return c.fakeKernel.Save(ctx, table)
}

func TestWithoutDriftASyncOnlyReadsTheMark(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	tp.sync(t, flowspec.State())
	c := &saveCounter{fakeKernel: tp.kernels[model.IPv4]}
	tp.fams[0].restorer = c
	for range 5 {
		tp.sync(t, flowspec.State())
	}
	if c.saves != 0 {
		t.Errorf("%d listings in syncs without drift, want none", c.saves)
	}
}

// racer writes something of its own right after each restore, before the
// Proxier reads the mark.
type racer struct {
	*fakeKernel
	t *testing.T
}

func (r *racer) Restore(ctx context.Context, data []byte) error {
	if err := r.fakeKernel.Restore(ctx, data); err != nil {
		return err
	}
	r.fakeKernel.foreign(r.t, "*nat\n:"+ChainMarkMasq+" - [0:0]\nCOMMIT\n", true)
	return nil
}

func TestAForeignWriteRightAfterProxydsIsCaughtByTheNextSync(t *testing.T) {
	cfg := flowspec.Config()
	tp := newTestProxier(t, cfg)
	k := tp.kernels[model.IPv4]
	tp.fams[0].restorer = &racer{fakeKernel: k, t: t}
	tp.sync(t, flowspec.State())
	tp.fams[0].restorer = k
	if st := tp.sync(t, flowspec.State()); st.DriftRepairs != 1 {
		t.Errorf("stats %+v, want the flush of %s that came right after the write repaired", st, ChainMarkMasq)
	}
	tp.wantKernelMatchesFullWrite(t, cfg, flowspec.State())
}

func TestTablesAreComparedHourlyEvenWhenTheMarkDidNotMove(t *testing.T) {
	cfg := flowspec.Config()
	tp := newTestProxier(t, cfg, WithVerifyEvery(time.Hour))
	tp.sync(t, flowspec.State())
	k := tp.kernels[model.IPv4]
	// A change the mark misses (iptables-legacy's size and count stay
	// the same when a rule is replaced by one as long).
	c := k.tables[tableNAT].chains[svcChain(webKey)]
	c.rules = c.rules[:1]
	tp.clock.Step(59 * time.Minute)
	if st := tp.sync(t, flowspec.State()); st.DriftRepairs != 0 {
		t.Errorf("stats %+v before the hour, want no check", st)
	}
	tp.clock.Step(time.Minute)
	if st := tp.sync(t, flowspec.State()); st.DriftRepairs != 1 {
		t.Errorf("stats %+v after the hour, want the flushed chain repaired", st)
	}
	tp.wantKernelMatchesFullWrite(t, cfg, flowspec.State())
}
