package iptables

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/internal/nfacct"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func TestKernelCounters(t *testing.T) {
	runInNetns(t, "^TestKernelCountersInNetns$")
}

// TestKernelCountersInNetns: with nfacct, the kernel takes the counted
// rules in both variants, and a connection to 127.0.0.1:NodePort bumps
// kube-proxy's counter.
func TestKernelCountersInNetns(t *testing.T) {
	v := inNetns(t)
	ctx := context.Background()
	run(t, "ip", "link", "set", "lo", "up")
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/route_localnet", []byte("1"), 0o644); err != nil {
		t.Fatalf("route_localnet in the test's netns: %v", err)
	}
	cfg := flowspec.Config()
	cfg.LocalhostNodePorts = true
	p, err := New(cfg, WithVariant(v), WithCounters(nfacct.Ensure))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Cleanup(ctx) })
	s := flowspec.State()
	if err := p.Sync(ctx, s, model.Compute(nil, s)); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := p.Counters(); got != (Counters{LocalhostNodePorts: true, InvalidDropped: true}) {
		t.Fatalf("Counters() = %+v, want both: the kernel has nfnetlink_acct and xt_nfacct", got)
	}
	v4 := string(saveAll(t, v, model.IPv4))
	for _, re := range [...]interface{ MatchString(string) bool }{countedLocalhostRE, countedInvalidRE} {
		if !re.MatchString(v4) {
			t.Errorf("iptables-save lacks %v:\n%s", re, v4)
		}
	}
	if v6 := string(saveAll(t, v, model.IPv6)); !countedInvalidRE.MatchString(v6) || strings.Contains(v6, CounterLocalhostNodePorts) {
		t.Errorf("IPv6 must count INVALID drops and never localhost NodePorts:\n%s", v6)
	}

	before, err := nfacct.Get(CounterLocalhostNodePorts)
	if err != nil {
		t.Fatal(err)
	}
	// The endpoints do not exist here: the SYN is counted and DNATed in
	// nat OUTPUT, then goes nowhere.
	for range 3 {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:30080", 200*time.Millisecond); err == nil {
			_ = c.Close()
		}
	}
	after, err := nfacct.Get(CounterLocalhostNodePorts)
	if err != nil {
		t.Fatal(err)
	}
	if after.Packets < before.Packets+3 || after.Bytes <= before.Bytes {
		t.Errorf("%s counted %+v, then %+v after 3 connections to 127.0.0.1:30080", CounterLocalhostNodePorts, before, after)
	}
	if err := nfacct.Ensure(CounterLocalhostNodePorts); err != nil {
		t.Errorf("Ensure of an existing counter: %v", err)
	}
	if again, _ := nfacct.Get(CounterLocalhostNodePorts); again.Packets < after.Packets {
		t.Errorf("Ensure of an existing counter reset it: %d packets, then %d", after.Packets, again.Packets)
	}
	if _, err := nfacct.Get("proxyd_never_made"); err == nil {
		t.Error("Get of a counter that does not exist succeeded")
	}
}
