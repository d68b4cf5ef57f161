package informer

import (
	"context"
	"unicode/utf8"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/proxyd/proxyd/pkg/model"
)

// Events posts proxyd's Warning Events through the events.k8s.io/v1 API,
// as kube-proxy posts its own, with reportingController "proxyd". The
// ClusterRole in deploy/daemonset.yaml grants create and patch on events.
// Repeats of one Event are merged into a series by client-go.
type Events struct {
	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder
}

// NewEvents returns Events writing through client; nothing is sent until
// Run.
func NewEvents(client kubernetes.Interface) *Events {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	return &Events{broadcaster: b, recorder: b.NewRecorder(scheme.Scheme, "proxyd")}
}

// Run sends Events until ctx ends.
func (e *Events) Run(ctx context.Context) error {
	if err := e.broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	e.broadcaster.Shutdown()
	return nil
}

// maxNote is the longest note the API accepts, in bytes.
const maxNote = 1024

// warn posts a Warning Event about ref. A nil Events does nothing.
func (e *Events) warn(ref *v1.ObjectReference, reason, note string) {
	if e == nil {
		return
	}
	if len(note) > maxNote {
		note = note[:maxNote-3]
		for !utf8.ValidString(note) {
			note = note[:len(note)-1]
		}
		note += "..."
	}
	e.recorder.Eventf(ref, nil, v1.EventTypeWarning, reason, "Proxying", "%s", note)
}

// ServiceWarning posts a Warning Event on the Service name, which the
// Informer knows (its UID names it); a Service it does not know is skipped.
func (i *Informer) ServiceWarning(name model.NamespacedName, reason, note string) {
	i.mu.Lock()
	svc := i.services.current[name]
	i.mu.Unlock()
	if svc == nil {
		return
	}
	i.opts.Events.warn(&v1.ObjectReference{Kind: kindService, APIVersion: "v1", Namespace: name.Namespace, Name: name.Name,
		UID: types.UID(svc.UID)}, reason, note)
}
