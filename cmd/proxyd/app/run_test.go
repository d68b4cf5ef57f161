package app

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/proxyd/proxyd/pkg/informer"
	"github.com/proxyd/proxyd/pkg/informer/convert/converttest"
	"github.com/proxyd/proxyd/pkg/model"
)

// notified signals each change the informer reports.
type notified chan struct{}

func (n notified) OnChange(string, time.Time) {
	select {
	case n <- struct{}{}:
	default:
	}
}

// The Builder changes its State in place; explain and the balance collector
// read the State on their own goroutines, so they get a copy that a later
// sync leaves as it was.
func TestASnapshotIsNotChangedByTheNextSync(t *testing.T) {
	svc, es := converttest.Service(), converttest.Slice()
	client := fake.NewClientset(svc, es)
	changed := make(notified, 1)
	inf := informer.New(client, informer.Options{}, changed)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go inf.Run(ctx)
	if err := inf.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	src := &changes{inf: inf}
	if src.Snapshot() != nil {
		t.Fatal("a snapshot before the first sync")
	}
	live, _ := src.Next()
	first := src.Snapshot()
	if len(first.Services) != 1 || src.Snapshot() != first {
		t.Fatalf("snapshot %v (again: the same copy %v), want the one port", first.Services, src.Snapshot() == first)
	}

	select { // drop the notice of the initial list, if one is left
	case <-changed:
	default:
	}
	if err := client.CoreV1().Services(svc.Namespace).Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var keys []model.ServicePortKey
	for deadline := time.Now().Add(10 * time.Second); len(keys) == 0; {
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
			t.Fatal("the informer never reported the deletion")
		}
		_, keys = src.Next()
	}
	if len(live.Services) != 0 {
		t.Fatalf("the Builder's State still holds %v: the test would not show a copy", live.Services)
	}
	if len(first.Services) != 1 {
		t.Errorf("the snapshot of the first sync changed with the second: %v", first.Services)
	}
	if second := src.Snapshot(); second == first || len(second.Services) != 0 {
		t.Errorf("after the deletion the snapshot holds %v (the old copy: %v), want none", second.Services, second == first)
	}
}
