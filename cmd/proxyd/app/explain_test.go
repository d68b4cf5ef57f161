package app

import (
	"net"
	"strings"
	"testing"
)

// closedAddr is a local address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return "http://" + addr
}

func TestExplainCommandLine(t *testing.T) {
	daemon := closedAddr(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no destination is a usage error", []string{"--from", "10.244.1.100"}, 2, "usage:"},
		{"an unknown output format is refused", []string{"--from", "10.244.1.100", "--to", "10.96.0.10:80", "-o", "yaml"}, 2, `-o "yaml"`},
		{"svc needs one NAMESPACE/NAME", []string{"svc"}, 2, "usage:"},
		{"svc without a namespace is refused", []string{"svc", "web", "--daemon", daemon}, 1, "want NAMESPACE/NAME"},
		{"svc without a daemon says where the spread comes from", []string{"svc", "default/web", "--daemon", daemon}, 1,
			"comes from the daemon's connection-balance collector"},
		{"a bad destination is named", []string{"--from", "10.244.1.100", "--to", "10.96.0.10", "--local"}, 1, "want IP:PORT"},
		{"an unknown mode is refused", []string{"--from", "10.244.1.100", "--to", "10.96.0.10:80", "--local", "--mode", "ebpf"}, 1, `--mode "ebpf"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			if code := explainMain(tc.args, &stdout, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.code, tc.stderr)
			}
		})
	}
}
