package nftables

import (
	"context"
	"errors"
	"maps"
	"slices"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// refusal reports whether err is the kernel's answer to a transaction
// (an errno): the kernel aborted it and holds what it held before.
func refusal(err error) bool {
	var errno syscall.Errno
	return err != nil && errors.As(err, &errno)
}

// contain narrows a refused transaction to the service ports responsible
// (proxier.Bisect): it programs s without them and returns them, with the
// State it programmed. Each try is a transaction of its own; the last one,
// which succeeded, leaves the kernel holding everything but the culprits.
// Only the ports of this sync are suspects, or every port when the table
// is written in full.
func (p *Proxier) contain(ctx context.Context, s *model.State, changed, out []model.ServicePortKey, refused error, stats *proxier.SyncStats) ([]model.ServicePortKey, *model.State, error) {
	suspects := changed
	for _, f := range p.families {
		if p.written[f] == nil {
			suspects = slices.Collect(maps.Keys(s.Services))
			break
		}
	}
	replan := slices.Concat(changed, suspects)
	var programmed *model.State
	try := func(exclude []model.ServicePortKey) error {
		st := p.without(s, slices.Concat(out, exclude))
		if err := p.syncAll(ctx, st, replan, stats); err != nil {
			return err
		}
		programmed = st
		return nil
	}
	culprits, err := proxier.Bisect(suspects, try)
	if err != nil {
		klog.InfoS("The kernel refused the nftables transaction and no service port alone explains it", "err", refused, "bisect", err)
		return nil, nil, refused
	}
	p.refused.Err = refused
	klog.InfoS("The kernel refused the rules of some service ports; they are left out, everything else is programmed", "ports", culprits, "err", refused)
	return culprits, programmed, nil
}

// without is s with the ports in out as proxyd last programmed them (or
// absent, if it never did).
func (p *Proxier) without(s *model.State, out []model.ServicePortKey) *model.State {
	if len(out) == 0 {
		return s
	}
	c := *s
	c.Services = maps.Clone(s.Services)
	for _, k := range out {
		if old := p.drift.programmed(k); old != nil {
			c.Services[k] = old
		} else {
			delete(c.Services, k)
		}
	}
	return &c
}
