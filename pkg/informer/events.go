package informer

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
)

// EventRecorder posts Events on Services, as component "proxyd" on this
// node. Callers rate-limit. The Service's UID, without which `kubectl
// describe` does not show an Event, comes from the Informer's cache (kube-
// proxy's role may list Services but not get them).
type EventRecorder struct {
	client kubernetes.Interface
	node   string
	inf    atomic.Pointer[Informer]
}

// NewEventRecorder returns a recorder posting through client; it needs
// Use before it can name a Service.
func NewEventRecorder(client kubernetes.Interface, node string) *EventRecorder {
	return &EventRecorder{client: client, node: node}
}

// Use makes the recorder look Services up in inf's cache.
func (r *EventRecorder) Use(inf *Informer) { r.inf.Store(inf) }

// Warn posts a Warning Event on the Service; failures are logged.
func (r *EventRecorder) Warn(svc model.NamespacedName, reason, message string) {
	if err := r.post(svc, v1.EventTypeWarning, reason, message); err != nil {
		klog.ErrorS(err, "Could not post an Event", "service", svc, "reason", reason)
	}
}

func (r *EventRecorder) post(svc model.NamespacedName, typ, reason, message string) error {
	inf := r.inf.Load()
	if inf == nil {
		return fmt.Errorf("no informer to find service %v in", svc)
	}
	obj, ok := inf.service(svc)
	if !ok {
		return fmt.Errorf("service %v is not in the informer's cache", svc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := metav1.NewTime(time.Now())
	ev := &v1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", svc.Name, now.UnixNano()), Namespace: svc.Namespace},
		InvolvedObject: v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: svc.Namespace, Name: svc.Name,
			UID: obj.UID, ResourceVersion: obj.ResourceVersion},
		Reason: reason, Message: message, Type: typ, Count: 1,
		FirstTimestamp: now, LastTimestamp: now,
		Source:              v1.EventSource{Component: "proxyd", Host: r.node},
		ReportingController: "proxyd", ReportingInstance: "proxyd-" + r.node,
	}
	if _, err := r.client.CoreV1().Events(svc.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create event on service %v: %w", svc, err)
	}
	return nil
}

// service returns the cached v1.Service named n.
func (i *Informer) service(n model.NamespacedName) (*v1.Service, bool) {
	for _, w := range i.watches {
		if !strings.HasPrefix(w.what, "services/") {
			continue
		}
		obj, found, err := w.informer.GetStore().GetByKey(n.Namespace + "/" + n.Name)
		if err != nil || !found {
			continue
		}
		if svc, ok := obj.(*v1.Service); ok {
			return svc, true
		}
	}
	return nil, false
}
