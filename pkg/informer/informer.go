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
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

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
	// ResyncPeriod is the informers' resync period; 0 disables resyncs.
	ResyncPeriod time.Duration
}

// Informer watches the apiserver and keeps the converted objects proxyd
// needs. Create it with New, start it with Run.
type Informer struct {
	opts    Options
	handler Handler
	logger  klog.Logger
	watches []watched
	started atomic.Bool

	mu       sync.Mutex
	services *store[model.Service]
	slices   *store[model.EndpointSlice]
	node     model.Node
	cidrs    map[string][]netip.Prefix
}

// watched is one running informer and its handler's registration, whose
// HasSynced is true once the initial list has been delivered to us.
type watched struct {
	what     string
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
	// optional informers do not gate WaitForSync: proxyd works without
	// them (an apiserver or RBAC role that lacks the resource).
	optional bool
}

// New creates the informers (none runs until Run) and registers their event
// handlers. h may be nil when nobody needs to be told about changes.
func New(client kubernetes.Interface, opts Options, h Handler) *Informer {
	i := &Informer{
		opts:     opts,
		handler:  h,
		logger:   klog.Background().WithName("informer"),
		services: newStore[model.Service](),
		slices:   newStore[model.EndpointSlice](),
		node:     model.Node{Name: opts.NodeName},
		cidrs:    map[string][]netip.Prefix{},
	}
	i.watchServiceCIDRs(client, opts.ResyncPeriod)

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
		svcInf := coreinformers.NewTypedFilteredServiceInformer(client, metav1.NamespaceAll, opts.ResyncPeriod, nil,
			func(o *metav1.ListOptions) { o.LabelSelector = svcSel })
		addWatch(i, "services/"+src.String(), svcInf, coreinformers.ServiceHandlerFuncs{
			AddFunc:    func(svc *v1.Service) { i.upsertService(src, svc) },
			UpdateFunc: func(_, svc *v1.Service) { i.upsertService(src, svc) },
			DeleteFunc: func(d coreinformers.DeletedService) { i.deleteService(src, d.GetObjectName()) },
		})

		esSel := selector(src, opts.ProxyName, true)
		esInf := discoveryinformers.NewTypedFilteredEndpointSliceInformer(client, metav1.NamespaceAll, opts.ResyncPeriod, nil,
			func(o *metav1.ListOptions) { o.LabelSelector = esSel })
		addWatch(i, "endpointslices/"+src.String(), esInf, discoveryinformers.EndpointSliceHandlerFuncs{
			AddFunc:    func(es *discovery.EndpointSlice) { i.upsertSlice(src, es) },
			UpdateFunc: func(_, es *discovery.EndpointSlice) { i.upsertSlice(src, es) },
			DeleteFunc: func(d discoveryinformers.DeletedEndpointSlice) { i.deleteSlice(src, d.GetObjectName()) },
		})
	}

	if opts.NodeName == "" {
		i.logger.Info("No node name given; not watching the Node")
	} else {
		nodeSel := fields.OneTermEqualSelector(metav1.ObjectNameField, opts.NodeName).String()
		nodeInf := coreinformers.NewTypedFilteredNodeInformer(client, opts.ResyncPeriod, nil,
			func(o *metav1.ListOptions) { o.FieldSelector = nodeSel })
		addWatch(i, "node", nodeInf, coreinformers.NodeHandlerFuncs{
			AddFunc:    i.upsertNode,
			UpdateFunc: func(_, n *v1.Node) { i.upsertNode(n) },
			DeleteFunc: func(d coreinformers.DeletedNode) { i.deleteNode(d.GetObjectName().Name) },
		})
	}
	return i
}

// addWatch registers h on inf and remembers both for Run and WaitForSync.
func addWatch[T cache.Object](i *Informer, what string, inf cache.TypedSharedIndexInformer[T], h cache.TypedResourceEventHandler[T]) {
	// managedFields are large and never read; drop them before caching.
	if err := inf.SetTransform(stripManagedFields); err != nil {
		i.logger.Error(err, "Cannot set informer transform", "informer", what)
	}
	reg, err := inf.AddTypedEventHandler(h)
	if err != nil {
		// Only possible on a stopped informer, which a new one is not.
		i.logger.Error(err, "Cannot register event handler", "informer", what)
		return
	}
	i.watches = append(i.watches, watched{what: what, informer: inf, reg: reg})
}

func stripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Run starts the informers and returns when ctx is done and they have
// stopped. It must be called once.
func (i *Informer) Run(ctx context.Context) {
	if !i.started.CompareAndSwap(false, true) {
		i.logger.Error(nil, "Informer.Run called more than once")
		<-ctx.Done()
		return
	}
	i.logger.V(2).Info("Starting informers", "count", len(i.watches), "node", i.opts.NodeName, "proxyName", i.opts.ProxyName)
	var wg sync.WaitGroup
	for _, w := range i.watches {
		wg.Go(func() { w.informer.RunWithContext(ctx) })
	}
	<-ctx.Done()
	wg.Wait()
}

// OptionalSyncWait bounds how long WaitForSync waits for optional
// informers once the required ones have synced.
var OptionalSyncWait = 3 * time.Second

// WaitForSync waits until every informer's initial list has been delivered
// to the Informer, so that Snapshot reflects the apiserver's state. It
// returns an error if ctx ends first.
func (i *Informer) WaitForSync(ctx context.Context) error {
	checkers := make([]cache.DoneChecker, 0, len(i.watches))
	for _, w := range i.watches {
		if !w.optional {
			checkers = append(checkers, w.reg.HasSyncedChecker())
		}
	}
	if !cache.WaitFor(ctx, "", checkers...) {
		return fmt.Errorf("wait for informers to sync: %w", context.Cause(ctx))
	}
	// Give optional informers a moment, so the first sync already has
	// them; one that cannot list (RBAC) only delays the start by this.
	optCtx, cancel := context.WithTimeout(ctx, OptionalSyncWait)
	defer cancel()
	var optional []cache.DoneChecker
	for _, w := range i.watches {
		if w.optional {
			optional = append(optional, w.reg.HasSyncedChecker())
		}
	}
	if len(optional) > 0 && !cache.WaitFor(optCtx, "", optional...) {
		i.logger.Info("Optional informers not synced; continuing without them for now", "waited", OptionalSyncWait)
	}
	i.logger.V(2).Info("Informers synced")
	return nil
}

// Synced reports whether every informer's initial list has been delivered.
func (i *Informer) Synced() bool {
	for _, w := range i.watches {
		if !w.optional && !w.reg.HasSynced() {
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

func (i *Informer) upsertService(src source, svc *v1.Service) {
	var m *model.Service
	if src.admits(svc.Labels, i.opts.ProxyName) {
		m = ConvertService(i.logger, svc, i.opts.ProxyName)
	}
	i.setService(src, model.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, m)
}

func (i *Informer) deleteService(src source, n cache.ObjectName) {
	i.setService(src, model.NamespacedName{Namespace: n.Namespace, Name: n.Name}, nil)
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
		m = ConvertEndpointSlice(i.logger, es, i.opts.ProxyName)
	}
	i.setSlice(src, model.NamespacedName{Namespace: es.Namespace, Name: es.Name}, m, triggerTime(i.logger, es))
}

func (i *Informer) deleteSlice(src source, n cache.ObjectName) {
	i.setSlice(src, model.NamespacedName{Namespace: n.Namespace, Name: n.Name}, nil, time.Time{})
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
	i.setNode(ConvertNode(i.logger, node))
}

func (i *Informer) deleteNode(name string) {
	if name != i.opts.NodeName {
		return
	}
	i.setNode(model.Node{Name: i.opts.NodeName})
}

func (i *Informer) setNode(n model.Node) {
	i.mu.Lock()
	changed := !reflect.DeepEqual(i.node, n)
	i.node = n
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
