package conntrack

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeProcSys is a /proc/sys tree holding the sysctls with these values.
func fakeProcSys(t *testing.T, values map[string]string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "net", "netfilter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range values {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func read(t *testing.T, root, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "net", "netfilter", name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestApplyWritesKubeProxysDefaultsAndOnlyWhatDiffers(t *testing.T) {
	root := fakeProcSys(t, map[string]string{
		"nf_conntrack_tcp_timeout_established": "432000", "nf_conntrack_tcp_timeout_close_wait": "3600",
		"nf_conntrack_udp_timeout": "30", "nf_conntrack_tcp_be_liberal": "0"})
	changed, err := DefaultTimeouts.Apply(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"net.netfilter.nf_conntrack_tcp_timeout_established=86400"}; !slices.Equal(changed, want) {
		t.Errorf("changed %v, want %v", changed, want)
	}
	if got := read(t, root, "nf_conntrack_tcp_timeout_established"); got != "86400" {
		t.Errorf("established = %s", got)
	}
	if got := read(t, root, "nf_conntrack_udp_timeout"); got != "30" {
		t.Errorf("a zero --conntrack-udp-timeout changed the kernel's: %s", got)
	}
	if changed, err := DefaultTimeouts.Apply(root); err != nil || len(changed) != 0 {
		t.Errorf("second apply changed %v (%v), want nothing", changed, err)
	}
	liberal := Timeouts{TCPBeLiberal: true, UDPStream: 2 * time.Minute}
	if _, err := liberal.Apply(root); err != nil {
		t.Fatal(err)
	}
	if read(t, root, "nf_conntrack_tcp_be_liberal") != "1" || read(t, root, "nf_conntrack_udp_timeout_stream") != "120" {
		t.Error("be-liberal or the UDP stream timeout was not written")
	}
}

func TestApplyWithoutConntrackSaysWhichSysctlFailedAndGoesOn(t *testing.T) {
	root := t.TempDir() // no net/netfilter: nf_conntrack is not loaded
	_, err := DefaultTimeouts.Apply(root)
	if err == nil || !strings.Contains(err.Error(), "nf_conntrack_tcp_timeout_established=86400") ||
		!strings.Contains(err.Error(), "nf_conntrack_tcp_timeout_close_wait=3600") {
		t.Errorf("err = %v, want both sysctls named", err)
	}
}
