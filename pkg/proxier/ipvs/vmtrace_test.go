//go:build ipvsvm

package ipvs

import (
	"context"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// The flow spec holds on what a real kernel holds after a sync: the
// proxyd-ipvs table read back over netlink and the IPVS table read back
// from ip_vs, traced together. (One scheduler: the unit tests run the
// others, and the spec's 3000 samples a case are slow under TCG.)
func TestVMFlowSpecOnWhatTheKernelHolds(t *testing.T) {
	for _, sched := range []string{"rr"} {
		t.Run(sched, func(t *testing.T) {
			h := vmHandle(t)
			p, err := New(flowspec.Config(), WithScheduler(sched))
			if err != nil {
				t.Fatal(err)
			}
			s := flowspec.State()
			if err := p.Sync(context.Background(), s, model.Compute(nil, s)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := p.Cleanup(context.Background()); err != nil {
					t.Error(err)
				}
			})
			nt, err := p.fw.Read()
			if err != nil || nt == nil {
				t.Fatalf("read the nftables table back: %v, %v", nt, err)
			}
			tab := readHandle(t, h, s.Node.IPs)
			checkBound(t, tab.VIPs())
			if got, want := stripComments(tab.String()), stripComments(RenderWith(s, sched, flowspec.Config()).String()); got != want {
				t.Fatalf("kernel IPVS table:\n%s\nwant:\n%s", got, want)
			}
			tr := TracerOver(tab, nt)
			flowspec.Run(t, tr)
			flowspec.RunExternal(t, tr)
			flowspec.RunAffinity(t, tr)
		})
	}
}
