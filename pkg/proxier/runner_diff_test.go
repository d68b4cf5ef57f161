package proxier

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/model"
)

// scripted is a Source whose States a test sets, with what changed.
type scripted struct {
	st   *model.State
	keys []model.ServicePortKey
}

func (s *scripted) Next() (*model.State, []model.ServicePortKey) {
	keys := s.keys
	s.keys = nil
	return s.st, keys
}

// diffs is a Backend that records the Diffs it is given and fails on demand.
type diffs struct {
	got  []model.Diff
	fail bool
}

func (*diffs) Mode() string { return "diffs" }
func (d *diffs) Sync(_ context.Context, _ *model.State, diff model.Diff) error {
	d.got = append(d.got, diff)
	if d.fail {
		return errors.New("kernel said no")
	}
	return nil
}
func (*diffs) Cleanup(context.Context) error { return nil }

// The Diff a backend gets is what changed since the last sync it
// completed: the changes of a failed sync are given again.
func TestTheDiffCoversEveryChangeSinceTheLastWrite(t *testing.T) {
	port := func(name string, p uint16) *model.ServicePort {
		return &model.ServicePort{Key: portKey(name), Port: p, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}}
	}
	src := &scripted{st: &model.State{Services: map[model.ServicePortKey]*model.ServicePort{}}}
	set := func(sps ...*model.ServicePort) {
		for _, sp := range sps {
			src.st.Services[sp.Key] = sp
			src.keys = append(src.keys, sp.Key)
		}
	}
	b := &diffs{}
	r := NewRunner(b, src, RunnerOptions{MaxInterval: time.Minute, Clock: clocktesting.NewFakeClock(time.Now())})
	ctx := context.Background()

	set(port("a", 80), port("b", 80))
	r.syncOnce(ctx)
	set(port("a", 81))
	b.fail = true
	r.syncOnce(ctx)
	set(port("b", 81))
	b.fail = false
	r.syncOnce(ctx)
	r.syncOnce(ctx)

	want := [][]model.ServicePortKey{{portKey("a"), portKey("b")}, {portKey("a")}, {portKey("a"), portKey("b")}, nil}
	for i, d := range b.got {
		if got := d.Changed(); !slices.Equal(got, want[i]) {
			t.Errorf("sync %d: changed %v, want %v", i+1, got, want[i])
		}
	}
	if len(b.got[0].Added) != 2 || len(b.got[2].Updated) != 2 {
		t.Errorf("diffs %+v: want two added, then two updated", b.got)
	}
}
