package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// extraSuffix is what AddNamespace accepts after "pxd-<id>-": the cluster
// lab's nodes (node2, node3, …) and its underlay (wire).
var extraSuffix = regexp.MustCompile(`^(node[0-9]+|wire)$`)

// AddNamespace creates the network namespace pxd-<id>-<suffix> (suffix
// nodeN or wire), owned by the lab like its own: recorded before it exists,
// so Sweep removes it after a crash, and deleted by Close. IPv6 duplicate
// address detection is off in it.
func (l *Lab) AddNamespace(suffix string) (string, error) {
	if !extraSuffix.MatchString(suffix) {
		return "", fmt.Errorf("lab: namespace suffix %q: want nodeN or wire", suffix)
	}
	name := "pxd-" + l.ID + "-" + suffix
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return "", errors.New("lab: AddNamespace after Close")
	}
	for _, ns := range l.namespaces() {
		if ns == name {
			l.mu.Unlock()
			return "", fmt.Errorf("lab: namespace %s exists", name)
		}
	}
	l.extraNS = append(l.extraNS, name)
	err := l.saveRecord()
	l.mu.Unlock()
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", fmt.Errorf("create netns %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	l.setSysctls(name, noDADSysctls)
	return name, nil
}

// SetSysctls writes sysctls (key → value, e.g. "net.ipv4.ip_forward" → "1")
// inside the namespace ns; failures are logged and skipped, as for the
// lab's own namespaces.
func (l *Lab) SetSysctls(ns string, kv map[string]string) {
	var kvs []struct{ key, value string }
	for k, v := range kv {
		kvs = append(kvs, struct{ key, value string }{k, v})
	}
	l.setSysctls(ns, kvs)
}

// NodeSysctls are the sysctls the lab sets in its node namespace, for
// callers that build more nodes.
func NodeSysctls() map[string]string {
	m := map[string]string{}
	for _, kv := range nodeSysctls {
		m[kv.key] = kv.value
	}
	return m
}

// IP runs `ip -n ns -batch -` with one command a line.
func IP(ns string, lines ...string) error { return ipBatch(ns, lines) }

// DefaultBinDir is where the upstream binaries are: $PROXYD_LAB_BIN, else
// the directory `make tools` recorded in ~/.cache/proxyd/.bin-path, else "".
func DefaultBinDir() string {
	if v := os.Getenv("PROXYD_LAB_BIN"); v != "" {
		return v
	}
	home, _ := os.UserHomeDir()
	if b, err := os.ReadFile(filepath.Join(home, ".cache/proxyd/.bin-path")); err == nil {
		return strings.TrimSpace(string(b))
	}
	return ""
}
