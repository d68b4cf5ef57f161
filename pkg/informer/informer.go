package informer

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/informer/convert"
	"github.com/proxyd/proxyd/pkg/model"
)

// The kinds passed to Handler.OnChange.
const (
	KindService   = "service"
	KindEndpoints = "endpoints"
	KindNode      = "node"
)

// Handler is told about changes; the runner implements it.
type Handler interface {
	// OnChange is called after any relevant add/update/delete, without
	// blocking: it runs on an informer's delivery goroutine, so it must only
	// note the change (e.g. mark the runner dirty) and return.
	// kind is "service" or "endpoints" or "node"; triggerTime is the
	// EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time
	// annotation (zero if absent or not a slice).
	OnChange(kind string, triggerTime time.Time)
}

// Options configures an Informer.
type Options struct {
	// NodeName is the node proxyd runs on; its Node object is watched for
	// the zone, addresses and readiness. Empty: no Node is watched.
	NodeName string
	// ProxyName, when set, makes proxyd also handle the objects whose
	// service.kubernetes.io/service-proxy-name label equals it.
	ProxyName string
	// Events, when set, receives Warning Events about the parts of
	// objects proxyd leaves out; without it they are only logged.
	Events *Events
}

// Informer watches the apiserver and keeps the converted objects proxyd
// needs. Create it with New, start it with Run.
type Informer struct {
	opts    Options
	handler Handler
	logger  klog.Logger
	watches []watcher
	started atomic.Bool
	reports *reports

	mu       sync.Mutex
	services *store[model.Service]
	slices   *store[model.EndpointSlice]
	node     model.Node
	cidrs    map[string][]netip.Prefix
	// nodeDirty and cidrsDirty say whether the node and the ranges
	// changed since the last Changes.
	nodeDirty, cidrsDirty bool
}

// New creates the watches (none runs until Run). h may be nil when nobody
// needs to be told about changes.
func New(client kubernetes.Interface, opts Options, h Handler) *Informer {
	logger := klog.Background().WithName("informer")
	i := &Informer{
		opts:     opts,
		handler:  h,
		logger:   logger,
		reports:  newReports(logger, opts.Events),
		services: newStore[model.Service](),
		slices:   newStore[model.EndpointSlice](),
		node:     model.Node{Name: opts.NodeName},
		cidrs:    map[string][]netip.Prefix{},
		// The first Changes carries the node and ranges, as it carries
		// every object.
		nodeDirty: true, cidrsDirty: true,
	}
	i.watchServiceCIDRs(client)

	srcs := []source{sourceDefault}
	if opts.ProxyName != "" {
		if err := validProxyName(opts.ProxyName); err != nil {
			// No object can carry such a label value, so there is
			// nothing to watch for it.
			i.logger.Error(err, "Not watching objects labelled for this proxy", "proxyName", opts.ProxyName)
		} else {
			srcs = append(srcs, sourceNamed)
		}
	}
	for _, src := range srcs {
		svcSel := selector(src, opts.ProxyName, false)
		addFeed(i, client, "services/"+src.String(), &v1.Service{}, client.CoreV1().Services(metav1.NamespaceAll),
			func(o *metav1.ListOptions) { o.LabelSelector = svcSel },
			func(svc *v1.Service) { i.upsertService(src, svc) },
			func(n model.NamespacedName) { i.deleteService(src, n) })
		esSel := selector(src, opts.ProxyName, true)
		addFeed(i, client, "endpointslices/"+src.String(), &discovery.EndpointSlice{}, client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll),
			func(o *metav1.ListOptions) { o.LabelSelector = esSel },
			func(es *discovery.EndpointSlice) { i.upsertSlice(src, es) },
			func(n model.NamespacedName) { i.deleteSlice(src, n) })
	}

	if opts.NodeName == "" {
		i.logger.Info("No node name given; not watching the Node")
	} else {
		nodeSel := fields.OneTermEqualSelector(metav1.ObjectNameField, opts.NodeName).String()
		addFeed(i, client, "node", &v1.Node{}, client.CoreV1().Nodes(),
			func(o *metav1.ListOptions) { o.FieldSelector = nodeSel },
			i.upsertNode,
			func(n model.NamespacedName) { i.deleteNode(n.Name) })
	}
	return i
}

// Run starts the watches and returns when ctx is done and they have
// stopped. It must be called once.
func (i *Informer) Run(ctx context.Context) {
	if !i.started.CompareAndSwap(false, true) {
		i.logger.Error(nil, "Informer.Run called more than once")
		<-ctx.Done()
		return
	}
	i.logger.V(2).Info("Starting watches", "count", len(i.watches), "node", i.opts.NodeName, "proxyName", i.opts.ProxyName)
	var wg sync.WaitGroup
	for _, w := range i.watches {
		wg.Go(func() { w.run(ctx) })
	}
	<-ctx.Done()
	wg.Wait()
}

// OptionalSyncWait bounds how long WaitForSync waits for optional
// informers once the required ones have synced.
var OptionalSyncWait = 3 * time.Second

// WaitForSync waits until every watch's initial list has been delivered
// to the Informer, so that Snapshot reflects the apiserver's state. It
// returns an error if ctx ends first.
func (i *Informer) WaitForSync(ctx context.Context) error {
	if err := i.waitFor(ctx, false); err != nil {
		return fmt.Errorf("wait for informers to sync: %w", err)
	}
	// Give optional watches a moment, so the first sync already has
	// them; one that cannot list (RBAC) only delays the start by this.
	optCtx, cancel := context.WithTimeout(ctx, OptionalSyncWait)
	defer cancel()
	if err := i.waitFor(optCtx, true); err != nil && ctx.Err() == nil {
		i.logger.Info("Optional informers not synced; continuing without them for now", "waited", OptionalSyncWait)
	}
	i.logger.V(2).Info("Informers synced")
	return nil
}

// waitFor polls until the required (or the optional) watches have synced.
func (i *Informer) waitFor(ctx context.Context, optional bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		done := true
		for _, w := range i.watches {
			done = done && (w.isOptional() != optional || w.hasSynced())
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

// Synced reports whether every required watch's initial list has been
// delivered.
func (i *Informer) Synced() bool {
	for _, w := range i.watches {
		if !w.isOptional() && !w.hasSynced() {
			return false
		}
	}
	return true
}

// Snapshot returns a consistent copy of the converted objects. The maps are
// new; the objects they point to are shared and must not be mutated.
func (i *Informer) Snapshot() model.Snapshot {
	i.mu.Lock()
	defer i.mu.Unlock()
	return model.Snapshot{
		Node:         i.node,
		Services:     i.services.snapshot(),
		Slices:       i.slices.snapshot(),
		ServiceCIDRs: i.serviceCIDRs(),
	}
}

// Changes returns what changed since the previous call (at the first,
// everything), for model.Builder.Update: its cost follows the number of
// changes, not of objects.
func (i *Informer) Changes() model.Changes {
	i.mu.Lock()
	defer i.mu.Unlock()
	ch := model.Changes{Services: i.services.take(), Slices: i.slices.take()}
	if i.nodeDirty {
		node := i.node
		ch.Node, i.nodeDirty = &node, false
	}
	if i.cidrsDirty {
		ch.ServiceCIDRs, ch.CIDRsChanged, i.cidrsDirty = i.serviceCIDRs(), true, false
	}
	return ch
}

func (i *Informer) upsertService(src source, svc *v1.Service) {
	var m *model.Service
	if src.admits(svc.Labels, i.opts.ProxyName) {
		var ds []convert.Drop
		m, ds = convert.Service(svc, i.opts.ProxyName)
		i.reports.dropped(kindService, svc, ds, m == nil)
	}
	i.setService(src, nameOf(svc), m)
}

func (i *Informer) deleteService(src source, n model.NamespacedName) {
	i.reports.forget(kindService, n)
	i.setService(src, n, nil)
}

func (i *Informer) setService(src source, n model.NamespacedName, m *model.Service) {
	i.mu.Lock()
	changed := i.services.set(src, n, m)
	i.mu.Unlock()
	if changed {
		i.logger.V(4).Info("Service changed", "service", n.String(), "present", m != nil, "source", src)
		i.notify(KindService, time.Time{})
	}
}

func (i *Informer) upsertSlice(src source, es *discovery.EndpointSlice) {
	var m *model.EndpointSlice
	if src.admits(es.Labels, i.opts.ProxyName) {
		var ds []convert.Drop
		m, ds = convert.EndpointSlice(es, i.opts.ProxyName)
		i.reports.dropped(kindEndpointSlice, es, ds, m == nil)
	}
	i.setSlice(src, nameOf(es), m, triggerTime(i.logger, es))
}

func (i *Informer) deleteSlice(src source, n model.NamespacedName) {
	i.reports.forget(kindEndpointSlice, n)
	i.setSlice(src, n, nil, time.Time{})
}

func (i *Informer) setSlice(src source, n model.NamespacedName, m *model.EndpointSlice, trigger time.Time) {
	i.mu.Lock()
	changed := i.slices.set(src, n, m)
	i.mu.Unlock()
	if changed {
		i.logger.V(4).Info("EndpointSlice changed", "endpointSlice", n.String(), "present", m != nil, "source", src)
		i.notify(KindEndpoints, trigger)
	}
}

func (i *Informer) upsertNode(node *v1.Node) {
	if node.Name != i.opts.NodeName {
		// The field selector should have kept it away.
		return
	}
	n, ds := convert.Node(node)
	i.reports.dropped(kindNode, node, ds, false)
	i.setNode(n)
}

func (i *Informer) deleteNode(name string) {
	if name != i.opts.NodeName {
		return
	}
	i.reports.forget(kindNode, model.NamespacedName{Name: name})
	i.setNode(model.Node{Name: i.opts.NodeName})
}

func (i *Informer) setNode(n model.Node) {
	i.mu.Lock()
	changed := !reflect.DeepEqual(i.node, n)
	i.node = n
	i.nodeDirty = i.nodeDirty || changed
	i.mu.Unlock()
	if changed {
		i.logger.V(2).Info("Node changed", "node", n.Name, "zone", n.Zone, "ips", n.IPs, "ready", n.Ready, "retiring", n.Retiring)
		i.notify(KindNode, time.Time{})
	}
}

func (i *Informer) notify(kind string, trigger time.Time) {
	if i.handler != nil {
		i.handler.OnChange(kind, trigger)
	}
}

// triggerTime parses the slice's last-change-trigger-time annotation; zero
// when absent or malformed.
func triggerTime(logger klog.Logger, es *discovery.EndpointSlice) time.Time {
	s, ok := es.Annotations[v1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		logger.V(2).Info("Ignoring malformed trigger time", "endpointSlice", klog.KObj(es), "value", s)
		return time.Time{}
	}
	return t
}
