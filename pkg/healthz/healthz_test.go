package healthz

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func get(t *testing.T, h http.Handler, path string) (int, status) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var st status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("%s body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, st
}

func TestHealthzFollowsKubeProxy(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	h := New(clock, 10*time.Second)
	handler := h.Handler()

	if code, st := get(t, handler, "/healthz"); code != 200 || !st.Healthy || st.NodeEligible == nil || !*st.NodeEligible {
		t.Errorf("fresh: %d %+v, want 200, healthy, eligible", code, st)
	}
	h.QueuedUpdate()
	clock.Step(11 * time.Second)
	if code, st := get(t, handler, "/healthz"); code != 503 || st.Healthy {
		t.Errorf("a change queued 11 s ago with a 10 s timeout: %d %+v, want 503", code, st)
	}
	h.Updated()
	clock.Step(time.Minute)
	if code, st := get(t, handler, "/healthz"); code != 200 || !st.LastUpdated.Equal(clock.Now()) {
		t.Errorf("synced, nothing queued: %d %+v, want 200 with lastUpdated now (%v), as kube-proxy reports it", code, st, clock.Now())
	}

	h.SetNodeRetiring(true)
	if code, st := get(t, handler, "/healthz"); code != 503 || st.NodeEligible == nil || *st.NodeEligible {
		t.Errorf("retiring node: /healthz %d %+v, want 503 and nodeEligible false", code, st)
	}
	if code, st := get(t, handler, "/livez"); code != 200 || st.NodeEligible != nil {
		t.Errorf("retiring node: /livez %d %+v, want 200 without nodeEligible", code, st)
	}
}

func TestEveryAnswerIsObserved(t *testing.T) {
	h := New(clocktesting.NewFakeClock(time.Now()), time.Second)
	seen := map[string]int{}
	h.Observe(func(path string, code int) { seen[path] = code })
	h.SetNodeRetiring(true)
	get(t, h.Handler(), "/healthz")
	get(t, h.Handler(), "/livez")
	if seen["/healthz"] != 503 || seen["/livez"] != 200 {
		t.Errorf("observed %v, want /healthz 503 and /livez 200", seen)
	}
}
