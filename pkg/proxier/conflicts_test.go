package proxier

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
)

func TestAConflictIsReportedOnceWhileItLasts(t *testing.T) {
	cf := model.Conflict{Destination: model.Destination{Protocol: model.TCP, Addr: netip.MustParseAddrPort("192.0.2.1:80")},
		Loser: portKey("new"), LoserKind: model.ExternalIPClaim, Winner: portKey("old"), WinnerKind: model.ExternalIPClaim}
	m := metrics.New("fake")
	events := &warnings{}
	var c conflicts
	steps := []struct {
		name      string
		now       []model.Conflict
		wantGauge float64
		wantEvent int
	}{
		{"a new conflict is reported", []model.Conflict{cf}, 1, 1},
		{"the same conflict in the next sync is not reported again", []model.Conflict{cf}, 1, 1},
		{"a settled conflict leaves the gauge", nil, 0, 1},
		{"a conflict that comes back is reported again", []model.Conflict{cf}, 1, 2},
	}
	for _, s := range steps {
		c.report(s.now, m, events)
		if got := gauge(t, m, "proxyd_service_conflicts"); got != s.wantGauge {
			t.Errorf("%s: proxyd_service_conflicts = %v, want %v", s.name, got, s.wantGauge)
		}
		if got := events.get(); len(got) != s.wantEvent || !slices.Contains(got, "ns/new "+ReasonServiceConflict) {
			t.Errorf("%s: events %v, want %d on ns/new", s.name, got, s.wantEvent)
		}
	}
}
