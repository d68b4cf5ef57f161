package app

import (
	"net/http"

	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/balance"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/explain"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// newDiagnostics builds the connection-balance collector (nil when
// --balance-interval is 0 or conntrack cannot be read) and the
// /debug/explain handler. Both read the kernel on their own goroutines,
// never on the sync path.
//
// state returns the programmed State, safe to read on their goroutines.
func newDiagnostics(o *Options, backend proxier.Backend, events balance.Recorder, state func() *model.State) (*balance.Collector, http.Handler, func()) {
	var closers []func()
	done := func() {
		for _, c := range closers {
			c()
		}
	}
	var collector *balance.Collector
	if o.Balance.Interval > 0 {
		r, err := conntrack.NewReader(0)
		if err != nil {
			klog.ErrorS(err, "Connection balance is off: cannot read conntrack")
		} else {
			closers = append(closers, func() { _ = r.Close() })
			collector = balance.New(o.Balance, balance.KernelSource(r), events, nil)
			collector.ReadStateFrom(state)
		}
	}
	x := &explain.Explainer{Dataplane: dataplaneOf(backend), State: state, Balance: collector, ReadBy: "daemon"}
	if r, err := conntrack.NewReader(0); err != nil {
		klog.ErrorS(err, "proxyd explain will not show conntrack entries")
	} else {
		closers = append(closers, func() { _ = r.Close() })
		x.Conntrack = r
	}
	return collector, explain.Handler(x), done
}
