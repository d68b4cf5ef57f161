package informer

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2/ktesting"

	"github.com/proxyd/proxyd/pkg/informer/convert"
)

func TestWhatIsLeftOutIsReportedOncePerGeneration(t *testing.T) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	rec := &events.FakeRecorder{Events: make(chan string, 100)}
	r := newReports(logger, &Events{recorder: rec})
	zoned := func(gen int64, ips ...string) *v1.Service {
		return service(func(s *v1.Service) { s.Generation = gen; s.Spec.ExternalIPs = ips })
	}
	steps := []struct {
		name   string
		svc    *v1.Service
		events int // Events posted by this step
	}{
		{"a zone address is reported", zoned(1, "fd00::1%eth0"), 1},
		{"the same generation again is not", zoned(1, "fd00::1%eth0"), 0},
		{"a new generation with the same problem is", zoned(2, "fd00::1%eth0"), 1},
		{"a fixed Service is not", zoned(3, "192.0.2.1"), 0},
		{"the problem coming back is", zoned(4, "fd00::1%eth0"), 1},
		{"an ExternalName Service is logged without an Event", service(func(s *v1.Service) {
			s.Generation, s.Spec.Type, s.Spec.ClusterIPs = 5, v1.ServiceTypeExternalName, nil
		}), 0},
	}
	for _, s := range steps {
		m, ds := convert.Service(s.svc, "")
		r.dropped(kindService, s.svc, ds, m == nil)
		if got := len(rec.Events); got != s.events {
			t.Errorf("%s: %d events, want %d", s.name, got, s.events)
		}
		for len(rec.Events) > 0 {
			ev := <-rec.Events
			if !strings.HasPrefix(ev, "Warning "+ReasonIgnoredField) || !strings.Contains(ev, `spec.externalIPs[0] "fd00::1%eth0"`) {
				t.Errorf("%s: event %q", s.name, ev)
			}
		}
	}
	logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	if n := strings.Count(logs, "Ignoring invalid parts of an object"); n != 3 {
		t.Errorf("%d log lines about the zone address, want 3:\n%s", n, logs)
	}
	if !strings.Contains(logs, "Not proxying") || !strings.Contains(logs, "ExternalName") {
		t.Errorf("the ExternalName Service is not logged:\n%s", logs)
	}
}
