package informer

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
)

// EventRecorder posts Events on Services, as component "proxyd" on this
// node. Callers rate-limit; each Warn is one GET (for the Service's UID,
// without which `kubectl describe` does not show the Event) and one
// create.
type EventRecorder struct {
	client kubernetes.Interface
	node   string
}

// NewEventRecorder returns a recorder posting through client.
func NewEventRecorder(client kubernetes.Interface, node string) *EventRecorder {
	return &EventRecorder{client: client, node: node}
}

// Warn posts a Warning Event on the Service; failures are logged.
func (r *EventRecorder) Warn(svc model.NamespacedName, reason, message string) {
	if err := r.post(svc, v1.EventTypeWarning, reason, message); err != nil {
		klog.ErrorS(err, "Could not post an Event", "service", svc, "reason", reason)
	}
}

func (r *EventRecorder) post(svc model.NamespacedName, typ, reason, message string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obj, err := r.client.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get service %v: %w", svc, err)
	}
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
