package proxier

import (
	"github.com/proxyd/proxyd/pkg/model"
)

// Source gives the Runner the State to program.
type Source interface {
	// Next returns the desired State and the keys of the service ports
	// that changed since the previous call (at the first, all of them).
	// The State may be the Source's own and change with the next call;
	// the Runner does not keep it.
	Next() (*model.State, []model.ServicePortKey)
}

// Rebuild is a Source that builds a whole State each time and finds what
// changed by comparing it with the previous one: simple, and as costly as
// the cluster is large. proxyd itself uses a model.Builder fed by the
// informer's changes.
func Rebuild(build func() *model.State) Source { return &rebuilt{build: build} }

type rebuilt struct {
	build func() *model.State
	prev  *model.State
}

func (r *rebuilt) Next() (*model.State, []model.ServicePortKey) {
	st := r.build()
	var keys []model.ServicePortKey
	for k, sp := range st.Services {
		if r.prev == nil || r.prev.Services[k] != sp {
			keys = append(keys, k)
		}
	}
	if r.prev != nil {
		for k := range r.prev.Services {
			if st.Services[k] == nil {
				keys = append(keys, k)
			}
		}
	}
	r.prev = st
	return st, keys
}
