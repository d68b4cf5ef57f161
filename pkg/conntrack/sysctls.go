package conntrack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Timeouts are kube-proxy's --conntrack-* settings that the kernel keeps
// per network namespace; a zero duration leaves that value as it is.
// (The table's size, --conntrack-max-per-core and --conntrack-min, is
// host-wide: nf_conntrack_max is read-only outside the host's namespace
// and its hash size is a module parameter, so proxyd leaves both alone.)
type Timeouts struct {
	TCPEstablished time.Duration
	TCPCloseWait   time.Duration
	TCPBeLiberal   bool
	UDP            time.Duration
	UDPStream      time.Duration
}

// DefaultTimeouts are kube-proxy's defaults.
var DefaultTimeouts = Timeouts{TCPEstablished: 24 * time.Hour, TCPCloseWait: time.Hour}

// Apply writes, under root (/proc/sys on a node), each value that differs
// from what the kernel has, and returns the sysctls it changed. It goes on
// past a failure and returns all of them joined.
func (t Timeouts) Apply(root string) (changed []string, err error) {
	var errs []error
	for _, s := range t.sysctls() {
		path := filepath.Join(root, "net", "netfilter", s.name)
		cur, rerr := os.ReadFile(path)
		if rerr == nil && strings.TrimSpace(string(cur)) == strconv.Itoa(s.value) {
			continue
		}
		if werr := os.WriteFile(path, []byte(strconv.Itoa(s.value)), 0o644); werr != nil {
			errs = append(errs, fmt.Errorf("set net.netfilter.%s=%d: %w", s.name, s.value, werr))
			continue
		}
		changed = append(changed, fmt.Sprintf("net.netfilter.%s=%d", s.name, s.value))
	}
	return changed, errors.Join(errs...)
}

type sysctl struct {
	name  string
	value int
}

func (t Timeouts) sysctls() []sysctl {
	var out []sysctl
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"nf_conntrack_tcp_timeout_established", t.TCPEstablished},
		{"nf_conntrack_tcp_timeout_close_wait", t.TCPCloseWait},
		{"nf_conntrack_udp_timeout", t.UDP},
		{"nf_conntrack_udp_timeout_stream", t.UDPStream},
	} {
		if s := int(d.d / time.Second); s > 0 {
			out = append(out, sysctl{d.name, s})
		}
	}
	if t.TCPBeLiberal {
		out = append(out, sysctl{"nf_conntrack_tcp_be_liberal", 1})
	}
	return out
}
