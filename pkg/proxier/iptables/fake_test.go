package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// fakeKernel is one family's tables in memory. It is both the restorer
// and the ruler of a family, and behaves like the kernel: a restore is
// applied atomically with --noflush semantics and fails as a whole on a
// jump to a missing chain, on deleting a chain that is still referenced or
// not empty, or on a target reached from a hook that does not allow it.
type fakeKernel struct {
	*ruleset
	// writes are the restore inputs that were applied, oldest first.
	writes [][]byte
	// failRestores makes the next n restores fail without effect.
	failRestores int
	// refuse, when set, makes the kernel refuse any batch with a rule for
	// which it returns true, as it would refuse an address or a match it
	// cannot take.
	refuse func(rule []string) bool
	// tests counts Test calls.
	tests int
	// gen counts committed changes, like the nftables generation: one per
	// table section of a restore, one per single-rule command.
	gen uint32
}

func (k *fakeKernel) mark() (mark, error) { return mark{k.gen}, nil }

func (k *fakeKernel) counting() bool { return true }

// Insert and Delete count their commit in gen.
func (k *fakeKernel) Insert(table, chain string, pos int, rulespec ...string) error {
	if err := k.ruleset.Insert(table, chain, pos, rulespec...); err != nil {
		return err
	}
	k.gen++
	return nil
}

func (k *fakeKernel) Delete(table, chain string, rulespec ...string) error {
	if err := k.ruleset.Delete(table, chain, rulespec...); err != nil {
		return err
	}
	k.gen++
	return nil
}

// newFakeKernel returns empty tables in a namespace without nfacct
// counters (see fakeAcct).
func newFakeKernel() *fakeKernel {
	k := &fakeKernel{ruleset: newRuleset()}
	k.ruleset.counters = fakeAcct{}.has
	return k
}

// fakeAcct is a network namespace's nfacct counters, shared by its
// families' tables as in the kernel.
type fakeAcct map[string]bool

func (a fakeAcct) has(name string) bool { return a[name] }

func (a fakeAcct) ensure(name string) error {
	a[name] = true
	return nil
}

func (k *fakeKernel) Restore(_ context.Context, data []byte) error {
	if k.failRestores > 0 {
		k.failRestores--
		return errors.New("fake iptables-restore: injected failure")
	}
	if err := k.refused(data); err != nil {
		return err
	}
	if err := k.restore(data, true); err != nil {
		return fmt.Errorf("fake iptables-restore: %w", err)
	}
	k.writes = append(k.writes, data)
	blocks, _ := parseRestore(data)
	k.gen += uint32(len(blocks))
	return nil
}

// Test applies data to empty tables, as in a fresh network namespace.
func (k *fakeKernel) Test(_ context.Context, data []byte) error {
	k.tests++
	if err := k.refused(data); err != nil {
		return err
	}
	if err := newRuleset().restore(data, true); err != nil {
		return fmt.Errorf("fake iptables-restore in a scratch namespace: %w", err)
	}
	return nil
}

// refused returns the kernel's refusal of data, if k.refuse takes one of
// its rules.
func (k *fakeKernel) refused(data []byte) error {
	if k.refuse == nil {
		return nil
	}
	blocks, err := parseRestore(data)
	if err != nil {
		return err
	}
	for _, b := range blocks {
		for _, o := range b.ops {
			if o.rule != nil && k.refuse(o.rule) {
				return fmt.Errorf("fake iptables-restore: line %d failed", o.line)
			}
		}
	}
	return nil
}

func (k *fakeKernel) Save(_ context.Context, table string) ([]byte, error) {
	return k.save(table), nil
}

// lastWrite is the last applied restore input, or "" when none.
func (k *fakeKernel) lastWrite() string {
	if len(k.writes) == 0 {
		return ""
	}
	return string(k.writes[len(k.writes)-1])
}

// canonical prints the tables in an order-independent form: per table,
// chains sorted by name, each with its rules in order. A table with
// nothing but empty built-in chains is left out, as if never used.
func (k *fakeKernel) canonical() string {
	var b strings.Builder
	for _, tn := range slices.Sorted(maps.Keys(k.tables)) {
		t := k.tables[tn]
		if !slices.ContainsFunc(slices.Collect(maps.Values(t.chains)), func(c *chain) bool { return !c.builtin || len(c.rules) > 0 }) {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", tn)
		for _, cn := range slices.Sorted(maps.Keys(t.chains)) {
			fmt.Fprintf(&b, ":%s\n", cn)
			for _, r := range t.chains[cn].rules {
				fmt.Fprintf(&b, "  %s\n", joinWords(r))
			}
		}
	}
	return b.String()
}

// testProxier is a Proxier on fake kernels, one per family.
type testProxier struct {
	*Proxier
	kernels map[model.IPFamily]*fakeKernel
	clock   *clocktesting.FakeClock
	acct    fakeAcct
}

func newTestProxier(t *testing.T, cfg proxier.Config, opts ...Option) *testProxier {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	o := options{clock: clk, verifyEvery: DefaultVerifyEvery,
		families: []model.IPFamily{model.IPv4, model.IPv6}}
	for _, opt := range opts {
		opt(&o)
	}
	tp := &testProxier{kernels: map[model.IPFamily]*fakeKernel{}, clock: clk, acct: fakeAcct{}}
	var fams []*family
	for _, fam := range o.families {
		k := newFakeKernel()
		k.ruleset.counters = tp.acct.has
		tp.kernels[fam] = k
		fams = append(fams, &family{fam: fam, r: newRenderer(cfg, fam), restorer: k, ruler: k, watch: k})
	}
	tp.Proxier = newProxier(cfg, o, fams)
	return tp
}

// sync runs Sync and fails the test on error.
func (tp *testProxier) sync(t *testing.T, s *model.State) proxier.SyncStats {
	t.Helper()
	if err := tp.Sync(context.Background(), s, model.Diff{}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return tp.LastSyncStats()
}

// wantKernelMatchesFullWrite checks that tp's kernels hold exactly what a
// fresh Proxier's full write of s produces.
func (tp *testProxier) wantKernelMatchesFullWrite(t *testing.T, cfg proxier.Config, s *model.State) {
	t.Helper()
	fresh := newTestProxier(t, cfg)
	fresh.sync(t, s)
	for fam, k := range tp.kernels {
		if got, want := k.canonical(), fresh.kernels[fam].canonical(); got != want {
			t.Errorf("%v tables after incremental syncs differ from a full write:\n--- got\n%s--- want\n%s", fam, got, want)
		}
	}
}

func TestFakeKernelRefusesWhatTheKernelRefuses(t *testing.T) {
	for _, tc := range []struct{ name, text string }{
		{"a jump to a missing chain", "*nat\n:PROXYD-A - [0:0]\n-A PROXYD-A -j PROXYD-MISSING\nCOMMIT\n"},
		{"deleting a chain that is referenced", "*nat\n:PROXYD-B - [0:0]\n-A PROXYD-B -j PROXYD-SEP\n-X PROXYD-SEP\nCOMMIT\n"},
		{"deleting a chain that is not empty", "*nat\n-X PROXYD-SEP\nCOMMIT\n"},
		{"deleting a built-in chain", "*nat\n-X PREROUTING\nCOMMIT\n"},
		{"DNAT reached from POSTROUTING", "*nat\n:PROXYD-C - [0:0]\n-A PROXYD-C -p tcp -j DNAT --to-destination 10.0.0.1:80\n-A POSTROUTING -j PROXYD-C\nCOMMIT\n"},
		{"REJECT in nat", "*nat\n:PROXYD-D - [0:0]\n-A PROXYD-D -j REJECT\nCOMMIT\n"},
		{"a loop", "*nat\n:PROXYD-E - [0:0]\n:PROXYD-F - [0:0]\n-A PROXYD-E -j PROXYD-F\n-A PROXYD-F -j PROXYD-E\n-A PREROUTING -j PROXYD-E\nCOMMIT\n"},
		{"a table without COMMIT", "*nat\n:PROXYD-G - [0:0]\n"},
		{"an unknown table", "*bogus\nCOMMIT\n"},
		{"a rule bumping an nfacct counter that does not exist", "*filter\n-A PROXYD-SERVICES -m nfacct --nfacct-name nothing -j DROP\nCOMMIT\n"},
	} {
		t.Run(tc.name+" fails the whole batch", func(t *testing.T) {
			k := newFakeKernel()
			setup := "*nat\n:PROXYD-SEP - [0:0]\n-A PROXYD-SEP -j RETURN\nCOMMIT\n*filter\n:PROXYD-SERVICES - [0:0]\nCOMMIT\n"
			if err := k.Restore(context.Background(), []byte(setup)); err != nil {
				t.Fatal(err)
			}
			before := k.canonical()
			if err := k.Restore(context.Background(), []byte("*filter\n:PROXYD-NEW - [0:0]\nCOMMIT\n"+tc.text)); err == nil {
				t.Fatal("restore succeeded")
			}
			if after := k.canonical(); after != before {
				t.Errorf("a failed restore changed the tables:\n%s", after)
			}
		})
	}
}

func TestFakeKernelNoflushKeepsWhatTheInputDoesNotName(t *testing.T) {
	k := newFakeKernel()
	ctx := context.Background()
	for _, text := range []string{
		"*nat\n:PROXYD-A - [0:0]\n:PROXYD-B - [0:0]\n-A PROXYD-A -j RETURN\n-A PROXYD-B -j RETURN\nCOMMIT\n",
		"*nat\n:PROXYD-A - [0:0]\n-A PROXYD-A -j ACCEPT\nCOMMIT\n",
	} {
		if err := k.Restore(ctx, []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	want := "*nat\n:INPUT\n:OUTPUT\n:POSTROUTING\n:PREROUTING\n:PROXYD-A\n  -j ACCEPT\n:PROXYD-B\n  -j RETURN\n"
	if got := k.canonical(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
