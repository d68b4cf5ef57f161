package proxier

import (
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
)

// EventSink posts Warning Events on Services; the informer implements it
// (client-go stops there).
type EventSink interface {
	Warn(svc model.NamespacedName, reason, note string)
}

// Event reasons the runner uses.
const (
	// ReasonServiceConflict: the Service lost a destination to another
	// (see model.Conflict).
	ReasonServiceConflict = "ServiceConflict"
	// ReasonKernelRefused: the kernel refused a port's rules.
	ReasonKernelRefused = "KernelRefused"
)

// conflictRule is the rule model.Conflict applies, for Event notes.
const conflictRule = "a ClusterIP beats a load-balancer IP, which beats an external IP; between equals the older Service wins"

// conflicts reports the conflicts Build settled: each one once, when it
// appears (a log line and a Warning Event on the losing Service), and
// again when it is gone (a log line); the gauge counts the live ones.
type conflicts struct {
	live map[model.Conflict]bool
}

func (c *conflicts) report(now []model.Conflict, m *metrics.Metrics, events EventSink) {
	next := make(map[model.Conflict]bool, len(now))
	for _, cf := range now {
		next[cf] = true
		if c.live[cf] {
			continue
		}
		klog.InfoS("Service conflict settled; the loser's contested part is left out", "conflict", cf.String(),
			"service", cf.Loser.Service().String(), "winner", cf.Winner.Service().String())
		if events != nil {
			events.Warn(cf.Loser.Service(), ReasonServiceConflict,
				cf.String()+": it is not programmed for this Service ("+conflictRule+")")
		}
	}
	for cf := range c.live {
		if !next[cf] {
			klog.InfoS("Service conflict gone", "conflict", cf.String())
		}
	}
	c.live = next
	if m != nil {
		m.ServiceConflicts.Set(float64(len(next)))
	}
}
