package testenv

import (
	"testing"
)

// recorder is a testing.TB that notes whether the test skipped or failed
// instead of stopping the goroutine.
type recorder struct {
	testing.TB
	skipped, failed bool
}

func (r *recorder) Helper()                  {}
func (r *recorder) Skip(...any)              { r.skipped = true }
func (r *recorder) Fatalf(string, ...any)    { r.failed = true }
func (r *recorder) Skipf(string, ...any)     { r.skipped = true }
func (r *recorder) Fatal(...any)             { r.failed = true }
func (r *recorder) Errorf(string, ...any)    { r.failed = true }
func (r *recorder) Logf(string, ...any)      {}
func (r *recorder) Name() string             { return "recorder" }
func (r *recorder) Setenv(key, value string) {}
func (r *recorder) Cleanup(func())           {}
func (r *recorder) Failed() bool             { return r.failed }
func (r *recorder) Skipped() bool            { return r.skipped }

func TestAMissingToolSkipsOutsideCIAndFailsInCI(t *testing.T) {
	for _, tc := range []struct {
		ci                  string
		wantSkip, wantFatal bool
	}{
		{"", true, false},
		{"0", true, false},
		{"false", true, false},
		{"1", false, true},
		{"true", false, true},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{}
			NeedTool(r, "proxyd-no-such-tool-on-any-path")
			if r.skipped != tc.wantSkip || r.failed != tc.wantFatal {
				t.Errorf("skipped=%v failed=%v, want skipped=%v failed=%v", r.skipped, r.failed, tc.wantSkip, tc.wantFatal)
			}
		})
	}
}

func TestAPresentToolNeitherSkipsNorFails(t *testing.T) {
	t.Setenv("CI", "1")
	r := &recorder{}
	if path := NeedTool(r, "go"); path == "" || r.skipped || r.failed {
		t.Errorf("NeedTool(go) = %q, skipped=%v failed=%v", path, r.skipped, r.failed)
	}
	t.Setenv("PXD_TESTENV_SET", "x")
	if v := NeedEnv(r, "PXD_TESTENV_SET", "test"); v != "x" || r.skipped || r.failed {
		t.Errorf("NeedEnv = %q, skipped=%v failed=%v", v, r.skipped, r.failed)
	}
}
