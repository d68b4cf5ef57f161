package informer

import (
	"net/netip"
	"slices"
	"time"

	networking "k8s.io/api/networking/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
)

// watchServiceCIDRs follows the networking.k8s.io/v1 ServiceCIDR objects,
// the ranges ClusterIPs come from, so traffic to an unallocated address in
// them can be refused. The watch is optional: without it (an RBAC role
// that lacks servicecidrs) proxyd still programs every Service.
func (i *Informer) watchServiceCIDRs(client kubernetes.Interface, resync time.Duration) {
	inf := networkinginformers.NewTypedServiceCIDRInformer(client, resync, nil)
	addWatch(i, "servicecidrs", inf, networkinginformers.ServiceCIDRHandlerFuncs{
		AddFunc:    i.upsertServiceCIDR,
		UpdateFunc: func(_, c *networking.ServiceCIDR) { i.upsertServiceCIDR(c) },
		DeleteFunc: func(d networkinginformers.DeletedServiceCIDR) { i.setServiceCIDR(d.GetObjectName().Name, nil) },
	})
	if n := len(i.watches); n > 0 && i.watches[n-1].what == "servicecidrs" {
		i.watches[n-1].optional = true
	}
}

func (i *Informer) upsertServiceCIDR(c *networking.ServiceCIDR) {
	var out []netip.Prefix
	for _, s := range c.Spec.CIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			i.logger.V(2).Info("Ignoring malformed ServiceCIDR range", "serviceCIDR", c.Name, "cidr", s, "err", err)
			continue
		}
		out = append(out, p.Masked())
	}
	i.setServiceCIDR(c.Name, out)
}

func (i *Informer) setServiceCIDR(name string, cidrs []netip.Prefix) {
	i.mu.Lock()
	old, had := i.cidrs[name]
	if cidrs == nil {
		delete(i.cidrs, name)
	} else {
		i.cidrs[name] = cidrs
	}
	i.mu.Unlock()
	if had == (cidrs != nil) && slices.Equal(old, cidrs) {
		return
	}
	i.notify(KindService, time.Time{})
}

// serviceCIDRs lists every known range; the caller holds i.mu.
func (i *Informer) serviceCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, c := range i.cidrs {
		out = append(out, c...)
	}
	return out
}
