package informer

import (
	"context"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
)

// object is what a watched API type is: *v1.Service, *v1.Node, …
type object interface {
	runtime.Object
	metav1.Object
}

// feed is the store one reflector writes into. It keeps none of the API
// objects: each is handed to upsert (which converts it) as it arrives, so
// the converted values are all proxyd holds, and client-go keeps no cache
// of its own. feed implements cache.ReflectorStore; the reflector calls it
// from its one goroutine.
type feed[T object] struct {
	what     string
	optional bool // does not gate WaitForSync (see watchServiceCIDRs)
	upsert   func(T)
	remove   func(model.NamespacedName)
	logger   klog.Logger

	held      map[model.NamespacedName]bool // names delivered and not removed
	synced    atomic.Bool
	reflector *cache.Reflector
}

// watcher is a feed of any type, as the Informer runs them.
type watcher interface {
	name() string
	isOptional() bool
	hasSynced() bool
	run(ctx context.Context)
}

// reflectorBackoff is how long a reflector waits before it lists again
// after a failed list or a watch that ended in an error (a resource
// version the apiserver no longer has, a 403, a 500): 0.2 s, doubling to
// 30 s, reset after 2 minutes without failures. client-go's default
// starts at 0.8 s with a jitter of up to 100 %. An unreachable apiserver
// does not reach the reflector at all: the outage gate holds its requests
// (see HoldDuringOutages).
func reflectorBackoff() *wait.Backoff {
	return &wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.5, Steps: 10, Cap: 30 * time.Second}
}

// resource is the typed client of one resource, e.g. v1.ServiceInterface.
type resource[L runtime.Object] interface {
	List(context.Context, metav1.ListOptions) (L, error)
	Watch(context.Context, metav1.ListOptions) (watch.Interface, error)
}

// addFeed registers a reflector for one resource: lists and watches of r
// with tweak applied to their options, objects of type example into upsert
// and remove.
func addFeed[T object, L runtime.Object](i *Informer, client kubernetes.Interface, what string, example T,
	r resource[L], tweak func(*metav1.ListOptions), upsert func(T), remove func(model.NamespacedName)) *feed[T] {
	f := &feed[T]{what: what, upsert: upsert, remove: remove, logger: i.logger, held: map[model.NamespacedName]bool{}}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return r.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return r.Watch(ctx, o)
		},
	}
	f.reflector = cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), example, f,
		cache.ReflectorOptions{Name: what, TypeDescription: what, Backoff: reflectorBackoff()})
	i.watches = append(i.watches, f)
	return f
}

func (f *feed[T]) name() string            { return f.what }
func (f *feed[T]) isOptional() bool        { return f.optional }
func (f *feed[T]) hasSynced() bool         { return f.synced.Load() }
func (f *feed[T]) run(ctx context.Context) { f.reflector.RunWithContext(ctx) }

func nameOf(o metav1.Object) model.NamespacedName {
	return model.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}
}

// typed returns obj as a T; anything else is logged and skipped.
func (f *feed[T]) typed(obj any) (T, bool) {
	t, ok := obj.(T)
	if !ok {
		f.logger.Error(nil, "Unexpected object from the apiserver", "watch", f.what, "type", klog.Format(obj))
	}
	return t, ok
}

// Add implements cache.ReflectorStore.
func (f *feed[T]) Add(obj any) error {
	if t, ok := f.typed(obj); ok {
		f.held[nameOf(t)] = true
		f.upsert(t)
	}
	return nil
}

// Update implements cache.ReflectorStore.
func (f *feed[T]) Update(obj any) error { return f.Add(obj) }

// Delete implements cache.ReflectorStore.
func (f *feed[T]) Delete(obj any) error {
	if t, ok := f.typed(obj); ok {
		n := nameOf(t)
		delete(f.held, n)
		f.remove(n)
	}
	return nil
}

// Replace implements cache.ReflectorStore: a (re)list. Every listed object
// is delivered; names held before and not listed now are removed.
func (f *feed[T]) Replace(list []any, _ string) error {
	keep := make(map[model.NamespacedName]bool, len(list))
	for _, obj := range list {
		if t, ok := f.typed(obj); ok {
			keep[nameOf(t)] = true
			f.upsert(t)
		}
	}
	for n := range f.held {
		if !keep[n] {
			f.remove(n)
		}
	}
	f.held = keep
	f.synced.Store(true)
	return nil
}

// Resync implements cache.ReflectorStore; there is nothing to resync.
func (f *feed[T]) Resync() error { return nil }
