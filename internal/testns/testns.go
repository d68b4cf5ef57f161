// Package testns gives tests a fresh network namespace of their own, so
// that nothing they program touches the host's namespace.
package testns

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/internal/testenv"
)

// NS is a named network namespace created for one test.
type NS struct {
	Name string
	// FD is an open descriptor of the namespace, for netlink sockets.
	FD int
}

// New creates a namespace named pxd-<prefix>-<random>, brings up its
// loopback and deletes it when the test ends. It skips the test when not
// running as root.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	testenv.NeedRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "pxd-" + prefix + "-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("open netns: %v", err)
	}
	ns := &NS{Name: name, FD: int(f.Fd())}
	t.Cleanup(func() {
		_ = f.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs argv inside the namespace and returns its standard output,
// failing the test on error.
func (ns *NS) Run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := ns.Try(argv...)
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return out
}

// Try runs argv inside the namespace; the error includes its output.
func (ns *NS) Try(argv ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), &runError{err: err, stderr: stderr.String()}
	}
	return string(out), nil
}

type runError struct {
	err    error
	stderr string
}

func (e *runError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }
func (e *runError) Unwrap() error { return e.err }
