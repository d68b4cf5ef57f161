package iptables

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// TestARefusedServicePortIsLeftOutAndEverythingElseProgrammed makes the
// fake kernel refuse every rule that mentions the dns Service's ClusterIP:
// the Sync programs everything else, reports dns in a RefusedError, keeps
// leaving it out while it is unchanged and tries it again once it changes.
func TestARefusedServicePortIsLeftOutAndEverythingElseProgrammed(t *testing.T) {
	cfg := flowspec.Config()
	tp := newTestProxier(t, cfg)
	bad := flowspec.DNSVIP.String() + "/32"
	for _, k := range tp.kernels {
		k.refuse = func(rule []string) bool { return slices.Contains(rule, bad) }
	}
	s := flowspec.State()
	err := tp.Sync(context.Background(), s, model.Diff{})
	var re *proxier.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("Sync = %v, want a RefusedError", err)
	}
	if !slices.Equal(re.Ports, []model.ServicePortKey{dnsKey}) {
		t.Errorf("refused %v, want only %v", re.Ports, dnsKey)
	}
	if proxier.FailedFamily(err) != "IPv4" || !strings.Contains(err.Error(), "line") {
		t.Errorf("the error does not carry the family and the kernel's refusal: %v", err)
	}
	if n := tp.kernels[model.IPv4].tests; n > 12 {
		t.Errorf("%d scratch tries to find one culprit among %d ports", n, len(s.Services))
	}
	// Everything else is programmed and works; dns is refused as a
	// ClusterIP with no rules at all would be (its range's REJECT).
	rest := without(s, []model.ServicePortKey{dnsKey})
	tp.wantKernelMatchesFullWrite(t, cfg, rest)
	tr, err := NewTracer(tp.kernels[model.IPv4].saveAll(), tp.kernels[model.IPv6].saveAll())
	if err != nil {
		t.Fatal(err)
	}
	var cases []flowspec.Case
	for _, c := range slices.Concat(flowspec.Cases(), flowspec.ExternalCases(), flowspec.AffinityCases()) {
		if c.Packet.Dst.Addr() != flowspec.DNSVIP {
			cases = append(cases, c)
		}
	}
	if f := flowspec.Check(tr, cases); len(f) != 0 {
		t.Errorf("the other Services do not work: %v", f)
	}

	// The next syncs leave dns out without trying it again.
	before := len(tp.kernels[model.IPv4].writes)
	tests := tp.kernels[model.IPv4].tests
	next := withPort(s, webKey, setEndpoints(localEndpoint(flowspec.Pod1), endpoint(flowspec.Pod1v6)))
	next.Services[dnsKey] = s.Services[dnsKey]
	if err := tp.Sync(context.Background(), next, model.Diff{}); !errors.As(err, &re) || !slices.Equal(re.Ports, []model.ServicePortKey{dnsKey}) {
		t.Fatalf("the next Sync = %v, want dns still reported", err)
	}
	if st := tp.LastSyncStats(); st.Full || len(tp.kernels[model.IPv4].writes) != before+1 || tp.kernels[model.IPv4].tests != tests {
		t.Errorf("the next sync was not one partial write without tries: %+v, %d writes, %d tries", st,
			len(tp.kernels[model.IPv4].writes)-before, tp.kernels[model.IPv4].tests-tests)
	}
	tp.wantKernelMatchesFullWrite(t, cfg, without(next, []model.ServicePortKey{dnsKey}))

	// Once dns changes (and the kernel takes it), it is programmed.
	for _, k := range tp.kernels {
		k.refuse = nil
	}
	fixed := withPort(next, dnsKey, func(sp *model.ServicePort) {})
	if err := tp.Sync(context.Background(), fixed, model.Diff{}); err != nil {
		t.Fatalf("Sync after dns changed: %v", err)
	}
	tp.wantKernelMatchesFullWrite(t, cfg, fixed)
}

func TestARefusalThatIsNotTheServicePortsFaultFailsTheSync(t *testing.T) {
	tp := newTestProxier(t, flowspec.Config())
	for _, k := range tp.kernels {
		k.refuse = func(rule []string) bool { return slices.Contains(rule, "--random-fully") } // a base chain's rule
	}
	err := tp.Sync(context.Background(), flowspec.State(), model.Diff{})
	var re *proxier.RefusedError
	if err == nil || errors.As(err, &re) {
		t.Fatalf("Sync = %v, want the refusal itself", err)
	}
}
