package informer

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networking "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/proxyd/proxyd/pkg/model"
)

const waitTimeout = 10 * time.Second

type change struct {
	kind    string
	trigger time.Time
}

// recorder is a Handler that queues every change for the test to inspect.
type recorder struct{ ch chan change }

func newRecorder() *recorder { return &recorder{ch: make(chan change, 1000)} }

func (r *recorder) OnChange(kind string, trigger time.Time) {
	select {
	case r.ch <- change{kind, trigger}:
	default:
		panic("recorder full")
	}
}

// next waits for the next change.
func (r *recorder) next(t *testing.T) change {
	t.Helper()
	select {
	case c := <-r.ch:
		return c
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for OnChange")
		return change{}
	}
}

// drain discards the changes recorded so far.
func (r *recorder) drain() {
	for {
		select {
		case <-r.ch:
		default:
			return
		}
	}
}

// start runs an Informer on a fake clientset holding objs and waits for it
// to sync; the informer stops when the test ends.
func start(t *testing.T, opts Options, objs ...runtime.Object) (*fake.Clientset, *Informer, *recorder) {
	t.Helper()
	client := fake.NewClientset(objs...)
	rec := newRecorder()
	inf := New(client, opts, rec)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		inf.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	syncCtx, syncCancel := context.WithTimeout(ctx, waitTimeout)
	defer syncCancel()
	if err := inf.WaitForSync(syncCtx); err != nil {
		t.Fatalf("WaitForSync: %v", err)
	}
	if !inf.Synced() {
		t.Fatal("Synced is false after WaitForSync")
	}
	return client, inf, rec
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func namedSlice(name string, edits ...func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
	es := slice(edits...)
	es.Name = name
	return es
}

func node(name, zone string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1.LabelTopologyZone: zone}},
		Status: v1.NodeStatus{
			Addresses:  []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.1"}},
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}},
		},
	}
}

func nn(ns, name string) model.NamespacedName { return model.NamespacedName{Namespace: ns, Name: name} }

func TestInformerTracksServicesSlicesAndNode(t *testing.T) {
	ctx := context.Background()
	client, inf, rec := start(t, Options{NodeName: "node-a", ProxyName: "proxyd"},
		service(), namedSlice("web-1"), namedSlice("web-2", func(es *discovery.EndpointSlice) {
			es.Endpoints[0].Addresses = []string{"10.1.0.2"}
		}),
		node("node-a", "zone-a"), node("node-b", "zone-b"))

	snap := inf.Snapshot()
	if got := snap.Services[nn("ns", "web")]; got == nil || got.Name != "web" || len(got.Ports) != 1 {
		t.Errorf("snapshot service = %+v, want ns/web with one port", got)
	}
	if len(snap.Slices) != 2 || snap.Slices[nn("ns", "web-1")] == nil || snap.Slices[nn("ns", "web-2")] == nil {
		t.Errorf("snapshot slices = %v, want web-1 and web-2", snap.Slices)
	}
	if snap.Node.Name != "node-a" || snap.Node.Zone != "zone-a" || !snap.Node.Ready {
		t.Errorf("snapshot node = %+v, want node-a in zone-a, ready", snap.Node)
	}
	rec.drain()

	t.Run("an annotation-only update triggers nothing, a readiness change does", func(t *testing.T) {
		t1 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		t2 := t1.Add(1500 * time.Millisecond)

		es, err := client.DiscoveryV1().EndpointSlices("ns").Get(ctx, "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		es.Annotations = map[string]string{
			v1.EndpointsLastChangeTriggerTime: t1.Format(time.RFC3339Nano),
			"example.com/note":                "unrelated",
		}
		if es, err = client.DiscoveryV1().EndpointSlices("ns").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}

		es.Annotations[v1.EndpointsLastChangeTriggerTime] = t2.Format(time.RFC3339Nano)
		es.Endpoints[0].Conditions = discovery.EndpointConditions{Ready: ptr(false)}
		if _, err = client.DiscoveryV1().EndpointSlices("ns").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}

		// One informer delivers in order: had the first update triggered,
		// its change would come first.
		if got := rec.next(t); got.kind != KindEndpoints || !got.trigger.Equal(t2) {
			t.Fatalf("first change = %+v, want endpoints at %v", got, t2)
		}
		if ep := inf.Snapshot().Slices[nn("ns", "web-1")].Endpoints[0]; ep.Ready || ep.Serving {
			t.Errorf("endpoint after readiness update = %+v, want not ready and (by default) not serving", ep)
		}
	})

	t.Run("objects the selectors should have excluded are filtered client-side", func(t *testing.T) {
		rec.drain()
		// The fake applies no selector to watches, so these reach every
		// informer: they must all be dropped.
		create(t, client,
			service(func(s *v1.Service) { s.Name = "theirs" }, withLabel(LabelServiceProxyName, "other")),
			service(func(s *v1.Service) { s.Name = "headless" }, withLabel(v1.IsHeadlessService, "")),
			namedSlice("theirs-1", func(es *discovery.EndpointSlice) { es.Labels[LabelServiceProxyName] = "other" }),
			namedSlice("headless-1", func(es *discovery.EndpointSlice) { es.Labels[v1.IsHeadlessService] = "" }),
			namedSlice("orphan-1", func(es *discovery.EndpointSlice) { delete(es.Labels, discovery.LabelServiceName) }),
			node("node-c", "zone-c"),
		)
		// Markers, created after them on each informer: one unlabelled and
		// one labelled for us per resource, and an update of our node.
		create(t, client,
			service(func(s *v1.Service) { s.Name = "plain" }),
			service(func(s *v1.Service) { s.Name = "ours" }, withLabel(LabelServiceProxyName, "proxyd")),
			namedSlice("plain-1"),
			namedSlice("ours-1", func(es *discovery.EndpointSlice) { es.Labels[LabelServiceProxyName] = "proxyd" }),
		)
		n, err := client.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Labels[v1.LabelTopologyZone] = "zone-z"
		if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}

		counts := map[string]int{}
		for range 5 {
			counts[rec.next(t).kind]++
		}
		if counts[KindService] != 2 || counts[KindEndpoints] != 2 || counts[KindNode] != 1 {
			t.Errorf("changes = %v, want 2 service, 2 endpoints, 1 node (the markers only)", counts)
		}
		snap := inf.Snapshot()
		for _, name := range []string{"web", "plain", "ours"} {
			if snap.Services[nn("ns", name)] == nil {
				t.Errorf("service %s missing from snapshot", name)
			}
		}
		for _, name := range []string{"theirs", "headless"} {
			if snap.Services[nn("ns", name)] != nil {
				t.Errorf("service %s leaked into the snapshot", name)
			}
		}
		for _, name := range []string{"theirs-1", "headless-1", "orphan-1"} {
			if snap.Slices[nn("ns", name)] != nil {
				t.Errorf("slice %s leaked into the snapshot", name)
			}
		}
		if len(snap.Slices) != 4 {
			t.Errorf("snapshot has %d slices, want web-1, web-2, plain-1, ours-1", len(snap.Slices))
		}
		if snap.Node.Name != "node-a" || snap.Node.Zone != "zone-z" {
			t.Errorf("snapshot node = %+v, want node-a in zone-z", snap.Node)
		}
		select {
		case c := <-rec.ch:
			t.Errorf("unexpected change %+v", c)
		case <-time.After(100 * time.Millisecond):
		}
	})

	t.Run("a service relabelled for another proxy disappears", func(t *testing.T) {
		rec.drain()
		svc, err := client.CoreV1().Services("ns").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Labels = map[string]string{LabelServiceProxyName: "other"}
		if _, err := client.CoreV1().Services("ns").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := rec.next(t); got.kind != KindService {
			t.Fatalf("change = %+v, want service", got)
		}
		if s := inf.Snapshot().Services[nn("ns", "web")]; s != nil {
			t.Errorf("relabelled service still in snapshot: %+v", s)
		}
	})

	t.Run("a service moving to our proxy name stays", func(t *testing.T) {
		svc, err := client.CoreV1().Services("ns").Get(ctx, "plain", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Labels = map[string]string{LabelServiceProxyName: "proxyd"}
		svc.Spec.Ports[0].Port = 81
		if _, err := client.CoreV1().Services("ns").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the relabelled service's new port", func() bool {
			s := inf.Snapshot().Services[nn("ns", "plain")]
			return s != nil && s.Ports[0].Port == 81
		})
		// Let the default informer's deletion land too; the named
		// informer's entry must remain.
		time.Sleep(100 * time.Millisecond)
		if s := inf.Snapshot().Services[nn("ns", "plain")]; s == nil || s.Ports[0].Port != 81 {
			t.Errorf("service after moving sources = %+v, want port 81", s)
		}
	})

	t.Run("a deleted slice and node leave the snapshot", func(t *testing.T) {
		rec.drain()
		if err := client.DiscoveryV1().EndpointSlices("ns").Delete(ctx, "web-2", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := rec.next(t); got.kind != KindEndpoints || !got.trigger.IsZero() {
			t.Fatalf("change = %+v, want endpoints with no trigger time", got)
		}
		if inf.Snapshot().Slices[nn("ns", "web-2")] != nil {
			t.Error("deleted slice still in snapshot")
		}
		if err := client.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := rec.next(t); got.kind != KindNode {
			t.Fatalf("change = %+v, want node", got)
		}
		if n := inf.Snapshot().Node; n.Name != "node-a" || n.Zone != "" || n.Ready || n.IPs != nil {
			t.Errorf("node after deletion = %+v, want only its name", n)
		}
	})
}

func TestInformerWithoutProxyNameIgnoresLabelledObjects(t *testing.T) {
	client, inf, rec := start(t, Options{NodeName: "node-a"})
	if len(inf.watches) != 4 {
		t.Errorf("%d informers, want servicecidrs, services, slices and node", len(inf.watches))
	}
	create(t, client,
		service(func(s *v1.Service) { s.Name = "named" }, withLabel(LabelServiceProxyName, "proxyd")),
		service(func(s *v1.Service) { s.Name = "plain" }),
	)
	if got := rec.next(t); got.kind != KindService {
		t.Fatalf("change = %+v, want service", got)
	}
	snap := inf.Snapshot()
	if snap.Services[nn("ns", "plain")] == nil || snap.Services[nn("ns", "named")] != nil {
		t.Errorf("services = %v, want only plain", snap.Services)
	}
	if snap.Node.Name != "node-a" {
		t.Errorf("node before its object exists = %+v, want its name", snap.Node)
	}
}

func TestInformerWithInvalidProxyNameWatchesOnlyUnlabelled(t *testing.T) {
	inf := New(fake.NewClientset(), Options{ProxyName: "not a label value!"}, nil)
	if len(inf.watches) != 3 {
		t.Errorf("%d informers, want servicecidrs, services and slices only", len(inf.watches))
	}
}

func TestWaitForSyncFailsWhenContextEnds(t *testing.T) {
	inf := New(fake.NewClientset(), Options{NodeName: "node-a"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// Run was never called, so nothing can sync.
	if err := inf.WaitForSync(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForSync = %v, want a deadline error", err)
	}
	if inf.Synced() {
		t.Error("Synced is true without Run")
	}
}

func create(t *testing.T, client *fake.Clientset, objs ...runtime.Object) {
	t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *v1.Service:
			_, err = client.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *discovery.EndpointSlice:
			_, err = client.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *v1.Node:
			_, err = client.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("create: unexpected %T", o)
		}
		if err != nil {
			t.Fatalf("create %T: %v", o, err)
		}
	}
}

func TestARelistTriggersOnlyWhatChanged(t *testing.T) {
	_, inf, rec := start(t, Options{NodeName: "node-a"}, service(), namedSlice("web-1"), node("node-a", "zone-a"))
	rec.drain()
	var services *feed[*v1.Service]
	for _, w := range inf.watches {
		if w.name() == "services/default" {
			services = w.(*feed[*v1.Service])
		}
	}
	before := inf.Snapshot().Services[nn("ns", "web")]
	// The reflector calls its store from one goroutine; the test stands in
	// for it, as a relist after a watch expired would.
	if err := services.Replace([]any{service()}, "2"); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-rec.ch:
		t.Errorf("relisting an unchanged Service triggered %+v", c)
	case <-time.After(100 * time.Millisecond):
	}
	if inf.Snapshot().Services[nn("ns", "web")] != before {
		t.Error("an unchanged Service got a new value; the model would rebuild it")
	}
	if err := services.Replace(nil, "3"); err != nil {
		t.Fatal(err)
	}
	if got := rec.next(t); got.kind != KindService || inf.Snapshot().Services[nn("ns", "web")] != nil {
		t.Errorf("a relist without the Service: change %+v, services %v", got, inf.Snapshot().Services)
	}
}

func TestServiceCIDRsReachTheSnapshotWithoutGatingSync(t *testing.T) {
	client := fake.NewClientset()
	rec := newRecorder()
	inf := New(client, Options{}, rec)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go inf.Run(ctx)
	if err := inf.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := client.NetworkingV1().ServiceCIDRs().Create(ctx, &networking.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec:       networking.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16", "not-a-cidr", "fd00:10:96::/112"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.next(t); got.kind != KindService {
		t.Fatalf("change = %+v, want service", got)
	}
	got := inf.Snapshot().ServiceCIDRs
	want := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/112")}
	if !slices.Equal(got, want) {
		t.Errorf("ServiceCIDRs = %v, want %v", got, want)
	}
}

func TestChangesCarryOnlyWhatChangedSinceTheLastCall(t *testing.T) {
	client, inf, rec := start(t, Options{NodeName: "node-a"}, service(), namedSlice("web-1"), namedSlice("web-2"), node("node-a", "zone-a"))
	first := inf.Changes()
	if len(first.Services) != 1 || len(first.Slices) != 2 || first.Node == nil || first.Node.Zone != "zone-a" || !first.CIDRsChanged {
		t.Fatalf("the first Changes = %+v, want everything", first)
	}
	if again := inf.Changes(); len(again.Services)+len(again.Slices) != 0 || again.Node != nil || again.CIDRsChanged {
		t.Fatalf("Changes with nothing changed = %+v", again)
	}
	rec.drain()
	es := namedSlice("web-2", func(es *discovery.EndpointSlice) { es.Endpoints[0].Addresses = []string{"10.1.0.9"} })
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(context.Background(), es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t)
	ch := inf.Changes()
	got, ok := ch.Slices[nn("ns", "web-2")]
	if len(ch.Slices) != 1 || !ok || got.Endpoints[0].Addresses[0] != netip.MustParseAddr("10.1.0.9") || len(ch.Services) != 0 || ch.Node != nil {
		t.Errorf("Changes after one slice update = %+v, want only web-2", ch)
	}
	if err := client.DiscoveryV1().EndpointSlices("ns").Delete(context.Background(), "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t)
	if ch := inf.Changes(); len(ch.Slices) != 1 || ch.Slices[nn("ns", "web-1")] != nil {
		t.Errorf("Changes after a delete = %+v, want web-1 as nil", ch)
	} else if _, ok := ch.Slices[nn("ns", "web-1")]; !ok {
		t.Errorf("Changes after a delete does not name web-1: %+v", ch)
	}
}
