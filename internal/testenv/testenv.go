// Package testenv decides what a test does when the machine lacks a tool,
// a privilege or a prebuilt binary it needs: on a developer's machine it
// skips, in CI (the environment variable CI set, as every CI system and
// `make test` set it) it fails, so that a missing package can never turn
// a kernel or lab test into a silent pass.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI: CI is set to anything but
// "", "0" or "false".
func InCI() bool {
	switch os.Getenv("CI") {
	case "", "0", "false":
		return false
	}
	return true
}

// Skip skips the test for reason, or fails it in CI.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI is set, so this test may not skip: %s", reason)
		return
	}
	t.Skip(reason)
}

// Skipf is Skip with a format.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	Skip(t, fmt.Sprintf(format, args...))
}

// NeedRoot skips (fails in CI) unless the test runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// NeedTool returns the path of the program name, and skips (fails in CI)
// when it is not on PATH.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Skipf(t, "needs %s: %v", name, err)
	}
	return path
}

// NeedEnv returns the value of the environment variable name, and skips
// (fails in CI) when it is empty; why says what sets it.
func NeedEnv(t testing.TB, name, why string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		Skipf(t, "%s is not set (%s)", name, why)
	}
	return v
}
