package informer

import (
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/informer/convert"
	"github.com/proxyd/proxyd/pkg/model"
)

// The kinds of objects proxyd reports on, as API kinds.
const (
	kindService       = "Service"
	kindEndpointSlice = "EndpointSlice"
	kindNode          = "Node"
	kindServiceCIDR   = "ServiceCIDR"
)

// apiVersions of the kinds above, for Event references.
var apiVersions = map[string]string{
	kindService:       "v1",
	kindEndpointSlice: "discovery.k8s.io/v1",
	kindNode:          "v1",
	kindServiceCIDR:   "networking.k8s.io/v1",
}

// Event reasons for what the informer leaves out.
const (
	// ReasonIgnoredField: parts of the object are left out.
	ReasonIgnoredField = "IgnoredField"
	// ReasonIgnoredObject: the whole object is left out.
	ReasonIgnoredObject = "IgnoredObject"
)

// reports logs, and posts as a Warning Event, what the conversions left out
// of each object: once per generation of the object, and again only when
// what is left out changes. It forgets an object once nothing of it is
// left out, or it is deleted.
type reports struct {
	logger klog.Logger
	events *Events

	mu   sync.Mutex
	last map[reportKey]reported
}

type reportKey struct {
	kind string
	name model.NamespacedName
}

type reported struct {
	generation int64
	what       string
}

func newReports(logger klog.Logger, events *Events) *reports {
	return &reports{logger: logger, events: events, last: map[reportKey]reported{}}
}

// dropped reports ds, the Drops of converting obj (ignored: all of obj is
// left out), unless this generation of obj has been reported with the same
// Drops.
func (r *reports) dropped(kind string, obj object, ds []convert.Drop, ignored bool) {
	key := reportKey{kind, nameOf(obj)}
	if len(ds) == 0 {
		r.forget(kind, key.name)
		return
	}
	parts := make([]string, len(ds))
	for n, d := range ds {
		parts[n] = d.String()
	}
	now := reported{generation: obj.GetGeneration(), what: strings.Join(parts, "; ")}
	r.mu.Lock()
	seen := r.last[key] == now
	r.last[key] = now
	r.mu.Unlock()
	if seen {
		return
	}
	if ds[0].Expected {
		r.logger.Info("Not proxying", "kind", kind, "object", klog.KObj(obj), "reason", now.what)
		return
	}
	msg, reason := "Ignoring invalid parts of an object", ReasonIgnoredField
	if ignored {
		msg, reason = "Ignoring an object", ReasonIgnoredObject
	}
	r.logger.Info(msg, "kind", kind, "object", klog.KObj(obj), "generation", now.generation, "dropped", parts)
	r.events.warn(&v1.ObjectReference{Kind: kind, APIVersion: apiVersions[kind], Namespace: obj.GetNamespace(), Name: obj.GetName(),
		UID: obj.GetUID()}, reason, "proxyd leaves out "+now.what)
}

// forget drops what was reported about an object.
func (r *reports) forget(kind string, name model.NamespacedName) {
	r.mu.Lock()
	delete(r.last, reportKey{kind, name})
	r.mu.Unlock()
}
