package iptables

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// contain handles a write of s that the kernel refused: it narrows the
// refusal to the service ports responsible by trying renderings without
// some of them in a scratch network namespace (proxier.Bisect; the
// node's rules are not touched meanwhile), then writes everything else in
// full and remembers the culprits, which later syncs leave out while they
// stay the same. When the refusal cannot be pinned on service ports it
// returns it.
func (p *Proxier) contain(ctx context.Context, f *family, s *model.State, refusal error, marks *markBook) (int, error) {
	var keys []model.ServicePortKey
	for k, sp := range s.Services {
		if _, ok := programmable(sp, f.fam); ok {
			keys = append(keys, k)
		}
	}
	tries := 0
	culprits, err := proxier.Bisect(keys, func(exclude []model.ServicePortKey) error {
		tries++
		return f.restorer.Test(ctx, f.r.render(without(s, exclude)))
	})
	if err != nil {
		klog.ErrorS(err, "Could not narrow a refused iptables write to service ports", "family", f.fam, "tries", tries)
		return 0, refusal
	}
	rest := without(s, culprits)
	n, err := p.write(ctx, f, rest, true, rest.Sorted, marks)
	if err != nil {
		return 0, fmt.Errorf("write everything but the refused service ports %v: %w (the refusal: %v)", culprits, err, refusal)
	}
	if f.refused == nil {
		f.refused = map[model.ServicePortKey]*model.ServicePort{}
	}
	for _, k := range culprits {
		f.refused[k] = s.Services[k]
	}
	f.refusal = refusal
	klog.ErrorS(refusal, "The kernel refused some service ports' iptables rules; they are left out, everything else is programmed",
		"family", f.fam, "servicePorts", fmt.Sprint(culprits), "tries", tries)
	return n, nil
}

// withoutRefused returns s without the refused service ports that are
// still the same (a changed one is tried again), or s itself when there
// are none.
func (f *family) withoutRefused(s *model.State) *model.State {
	var still []model.ServicePortKey
	for k, sp := range f.refused {
		if s.Services[k] == sp {
			still = append(still, k)
		} else {
			delete(f.refused, k)
		}
	}
	if len(still) == 0 {
		f.refused, f.refusal = nil, nil
		return s
	}
	return without(s, still)
}

// addRefused adds the family's refused service ports to e, creating it
// when needed.
func (f *family) addRefused(e *proxier.RefusedError) *proxier.RefusedError {
	if len(f.refused) == 0 {
		return e
	}
	if e == nil {
		e = &proxier.RefusedError{Err: &proxier.FamilyError{Family: f.fam, Err: f.refusal}}
	}
	e.Ports = slices.AppendSeq(e.Ports, maps.Keys(f.refused))
	slices.SortFunc(e.Ports, model.ServicePortKey.Compare)
	e.Ports = slices.Compact(e.Ports)
	return e
}

// render is the full restore text for s, as a write into empty tables.
func (r *renderer) render(s *model.State) []byte {
	var t restoreText
	r.plan(&t, s, nil, planOptions{sorted: s.Sorted})
	return t.bytes()
}

// without returns a State like s without the service ports keys.
func without(s *model.State, keys []model.ServicePortKey) *model.State {
	out := &model.State{Node: s.Node, ServiceCIDRs: s.ServiceCIDRs, Services: maps.Clone(s.Services)}
	for _, k := range keys {
		delete(out.Services, k)
	}
	return out
}
