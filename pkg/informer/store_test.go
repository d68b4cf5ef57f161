package informer

import (
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
)

// An object whose proxy-name label changes leaves one informer and joins the
// other; the two informers' events may arrive in any order. Whatever the
// order, once both have been seen the store must hold the newest version.
func TestStoreFollowsObjectsAcrossSources(t *testing.T) {
	name := model.NamespacedName{Namespace: "ns", Name: "web"}
	v1 := &model.Service{Namespace: "ns", Name: "web", AffinitySeconds: 1}
	v2 := &model.Service{Namespace: "ns", Name: "web", AffinitySeconds: 2}
	v3 := &model.Service{Namespace: "ns", Name: "web", AffinitySeconds: 3}

	type event struct {
		src source
		obj *model.Service // nil: delete
	}
	tests := []struct {
		name   string
		events []event
		want   *model.Service
	}{
		{name: "label added, new informer first",
			events: []event{{sourceDefault, v1}, {sourceNamed, v2}, {sourceDefault, nil}}, want: v2},
		{name: "label added, old informer first",
			events: []event{{sourceDefault, v1}, {sourceDefault, nil}, {sourceNamed, v2}}, want: v2},
		{name: "label removed, new informer first",
			events: []event{{sourceNamed, v1}, {sourceDefault, v2}, {sourceNamed, nil}}, want: v2},
		{name: "label added then removed again, events of the default informer first",
			events: []event{{sourceDefault, v1}, {sourceDefault, nil}, {sourceDefault, v3}, {sourceNamed, v2}, {sourceNamed, nil}}, want: v3},
		{name: "deleted from both informers",
			events: []event{{sourceDefault, v1}, {sourceNamed, v2}, {sourceNamed, nil}, {sourceDefault, nil}}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore[model.Service]()
			for _, e := range tt.events {
				s.set(e.src, name, e.obj)
			}
			got := s.snapshot()[name]
			if got != tt.want {
				t.Errorf("store holds %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestStoreReportsOnlyRealChanges(t *testing.T) {
	name := model.NamespacedName{Namespace: "ns", Name: "web"}
	s := newStore[model.Service]()
	steps := []struct {
		what    string
		obj     *model.Service
		changed bool
	}{
		{"adding a service is a change", &model.Service{Name: "web", AffinitySeconds: 1}, true},
		{"an equal value under a new pointer is no change", &model.Service{Name: "web", AffinitySeconds: 1}, false},
		{"a different value is a change", &model.Service{Name: "web", AffinitySeconds: 2}, true},
		{"deleting is a change", nil, true},
		{"deleting what is not there is no change", nil, false},
	}
	for _, st := range steps {
		if got := s.set(sourceDefault, name, st.obj); got != st.changed {
			t.Errorf("%s: changed = %v", st.what, got)
		}
	}
}
