package informer

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/pkg/model"
)

func TestAWarningIsPostedOnTheServiceItNamesWithItsUID(t *testing.T) {
	svc := service(func(s *v1.Service) { s.UID = "uid-1" })
	client, inf, _ := start(t, Options{}, svc)
	rec := NewEventRecorder(client, "node-a")
	rec.Use(inf)
	rec.Warn(model.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, "ConnectionsPinned", "stuck")
	rec.Warn(model.NamespacedName{Namespace: svc.Namespace, Name: "absent"}, "ConnectionsPinned", "nobody")

	events, err := client.CoreV1().Events(svc.Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.Items) != 1 {
		t.Fatalf("%d events, want one (none for a Service the cache lacks)", len(events.Items))
	}
	ev := events.Items[0]
	if ev.InvolvedObject.Kind != "Service" || ev.InvolvedObject.Name != svc.Name || ev.InvolvedObject.UID != "uid-1" ||
		ev.Type != "Warning" || ev.Reason != "ConnectionsPinned" || ev.Message != "stuck" || ev.Source.Component != "proxyd" || ev.Source.Host != "node-a" {
		t.Errorf("event %+v", ev)
	}
}
