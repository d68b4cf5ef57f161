package app

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/proxyd/proxyd/pkg/metrics"
)

func TestMetricsAddressAnswersWhatKubeProxysDoes(t *testing.T) {
	health := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{"lastUpdated":""}`) })
	for _, mode := range []string{"nftables", "iptables", "ipvs"} {
		h := metricsHandler(&Options{Mode: mode}, metrics.New(mode), health, nil)
		for _, tc := range []struct {
			path, body, contentType string
		}{
			{"/proxyMode", mode, "text/plain; charset=utf-8"},
			{"/healthz", `{"lastUpdated":""}`, ""},
			{"/livez", `{"lastUpdated":""}`, ""},
		} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rec.Code != http.StatusOK || rec.Body.String() != tc.body {
				t.Errorf("%s mode: GET %s = %d %q, want 200 %q", mode, tc.path, rec.Code, rec.Body.String(), tc.body)
			}
			if tc.contentType != "" && rec.Header().Get("Content-Type") != tc.contentType {
				t.Errorf("%s mode: GET %s Content-Type %q, want %q", mode, tc.path, rec.Header().Get("Content-Type"), tc.contentType)
			}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		if rec.Code != http.StatusOK {
			t.Errorf("%s mode: GET /metrics = %d", mode, rec.Code)
		}
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("%s mode: /debug/pprof/ without --profiling = %d, want 404", mode, rec.Code)
		}
	}
}
