package informer

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/pkg/model"
)

func TestAWarningIsPostedOnTheServiceItNamesWithItsUID(t *testing.T) {
	svc := service(func(s *v1.Service) { s.UID = "uid-1" })
	client, _, _ := start(t, Options{}, svc)
	events := NewEvents(client)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = events.Run(ctx) }()
	_, inf, _ := start(t, Options{Events: events}, svc)
	inf.ServiceWarning(model.NamespacedName{Namespace: svc.Namespace, Name: "absent"}, "ConnectionsPinned", "nobody")
	inf.ServiceWarning(model.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, "ConnectionsPinned", "stuck")

	deadline := time.Now().Add(waitTimeout)
	for {
		list, err := client.EventsV1().Events(svc.Namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) > 1 {
			t.Fatalf("%d events, want one (none for a Service the cache lacks)", len(list.Items))
		}
		if len(list.Items) == 1 {
			ev := list.Items[0]
			if ev.Regarding.Kind != "Service" || ev.Regarding.Name != svc.Name || ev.Regarding.UID != "uid-1" ||
				ev.Type != "Warning" || ev.Reason != "ConnectionsPinned" || ev.Note != "stuck" || ev.ReportingController != "proxyd" {
				t.Errorf("event %+v", ev)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no Event was posted")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
