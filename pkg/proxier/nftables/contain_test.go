package nftables

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// A port whose rules the kernel refuses — here it claims another port's
// ClusterIP and port, which the model would not let through on its own —
// is left out, and everything else of the same sync is programmed. It
// stays out, with the refusal reported each sync and nothing written, until
// it changes.
func TestKernelRefusedPortIsLeftOutAndTheRestProgrammed(t *testing.T) {
	ns := testns.New(t, "nftrefuse")
	p := newKernelProxier(t, ns)
	prev := bigState(20, 3)
	if err := p.Sync(context.Background(), prev, model.Compute(nil, prev)); err != nil {
		t.Fatal(err)
	}
	next := bigState(22, 3)
	// svc-00021 takes svc-00005's VIP with two endpoints: its dispatch
	// element and map elements collide with svc-00005's.
	bad := svcKey(21)
	clash := *next.Services[bad]
	clash.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.5")}
	clash.ClusterEndpoints = clash.ClusterEndpoints[:2]
	next.Services[bad] = &clash
	err := p.Sync(context.Background(), next, model.Compute(prev, next))
	var refused *proxier.RefusedError
	if !errors.As(err, &refused) || len(refused.Ports) != 1 || refused.Ports[0] != bad {
		t.Fatalf("sync returned %v, want the refusal of %v alone", err, bad)
	}
	dispatch := ns.Run(t, "nft", "list", "map", "ip", TableName, ServiceIPsMap)
	for _, want := range []string{`10.96.0.20 . tcp . 80 comment "bench/svc-00020/tcp/http"`, `10.96.0.5 . tcp . 80 comment "bench/svc-00005/tcp/http" : goto pick-tcp-3`} {
		if !strings.Contains(dispatch, want) {
			t.Errorf("service-ips lacks %s:\n%s", want, dispatch)
		}
	}
	if strings.Contains(dispatch, "svc-00021") {
		t.Errorf("the refused port is in service-ips:\n%s", dispatch)
	}
	err = p.Sync(context.Background(), next, model.Diff{})
	if !errors.As(err, &refused) || refused.Ports[0] != bad {
		t.Errorf("the next sync returned %v, want the refusal again", err)
	}
	if s := p.LastSyncStats(); !s.Skipped {
		t.Errorf("the next sync wrote: %+v", s)
	}
	fixed := bigState(22, 3)
	if err := p.Sync(context.Background(), fixed, model.Compute(next, fixed)); err != nil {
		t.Fatalf("the port fixed: %v", err)
	}
	if d := ns.Run(t, "nft", "list", "map", "ip", TableName, ServiceIPsMap); !strings.Contains(d, `10.96.0.21 . tcp . 80 comment "bench/svc-00021/tcp/http"`) {
		t.Errorf("the fixed port is not programmed:\n%s", d)
	}
}
