package informer

import (
	"maps"
	"reflect"

	"github.com/proxyd/proxyd/pkg/informer/convert"
	"github.com/proxyd/proxyd/pkg/model"
)

// source tells which of the (up to) two informers of a resource an event
// came from; see the package doc.
type source uint8

const (
	// sourceDefault watches objects without a service-proxy-name label.
	sourceDefault source = iota
	// sourceNamed watches objects whose service-proxy-name is ProxyName.
	sourceNamed
	numSources
)

func (s source) String() string {
	if s == sourceNamed {
		return "named"
	}
	return "default"
}

// admits is the client-side twin of the source's label selector: it reports
// whether an object with these labels belongs to this source's informer.
// The fake clientset, for one, does not apply selectors to watches.
func (s source) admits(labels map[string]string, proxyName string) bool {
	v, named := labels[convert.LabelServiceProxyName]
	if s == sourceNamed {
		return named && v == proxyName
	}
	return !named
}

// store keeps the converted objects of one resource, per source, and the
// effective value of each name. It is not safe for concurrent use; the
// Informer's mutex guards it. Stored objects are never mutated.
type store[T any] struct {
	bySource [numSources]map[model.NamespacedName]stamped[T]
	current  map[model.NamespacedName]*T
	seq      uint64
	// dirty are the names whose effective value changed since the last
	// take.
	dirty map[model.NamespacedName]struct{}
}

// stamped is a converted object and the sequence number of the event that
// stored it, so the most recent event wins when both sources hold a name.
type stamped[T any] struct {
	obj *T
	seq uint64
}

func newStore[T any]() *store[T] {
	s := &store[T]{current: map[model.NamespacedName]*T{}, dirty: map[model.NamespacedName]struct{}{}}
	for i := range s.bySource {
		s.bySource[i] = map[model.NamespacedName]stamped[T]{}
	}
	return s
}

// set records that src now holds obj under name (nil: holds nothing) and
// reports whether the effective value of name changed, comparing converted
// values rather than pointers.
func (s *store[T]) set(src source, name model.NamespacedName, obj *T) bool {
	before := s.current[name]
	if obj == nil {
		delete(s.bySource[src], name)
	} else {
		// An equal value keeps its pointer, so that a relist or an
		// update that changes nothing proxyd reads looks unchanged to
		// the model's memo too.
		if old, ok := s.bySource[src][name]; ok && reflect.DeepEqual(old.obj, obj) {
			obj = old.obj
		}
		s.seq++
		s.bySource[src][name] = stamped[T]{obj: obj, seq: s.seq}
	}

	var after stamped[T]
	for i := range s.bySource {
		if e, ok := s.bySource[i][name]; ok && e.seq > after.seq {
			after = e
		}
	}
	if after.obj == nil {
		delete(s.current, name)
	} else {
		s.current[name] = after.obj
	}
	if before == after.obj || reflect.DeepEqual(before, after.obj) {
		return false
	}
	s.dirty[name] = struct{}{}
	return true
}

// take returns the effective value (nil: none) of every name that changed
// since the last take.
func (s *store[T]) take() map[model.NamespacedName]*T {
	out := make(map[model.NamespacedName]*T, len(s.dirty))
	for n := range s.dirty {
		out[n] = s.current[n]
	}
	clear(s.dirty)
	return out
}

// snapshot returns a copy of the effective values.
func (s *store[T]) snapshot() map[model.NamespacedName]*T {
	return maps.Clone(s.current)
}
