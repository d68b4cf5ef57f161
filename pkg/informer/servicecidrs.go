package informer

import (
	"net/netip"
	"slices"
	"time"

	networking "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/proxyd/proxyd/pkg/informer/convert"
	"github.com/proxyd/proxyd/pkg/model"
)

// watchServiceCIDRs follows the networking.k8s.io/v1 ServiceCIDR objects,
// the ranges ClusterIPs come from, so traffic to an unallocated address in
// them can be refused. The watch is optional: without it (an RBAC role
// that lacks servicecidrs) proxyd still programs every Service.
func (i *Informer) watchServiceCIDRs(client kubernetes.Interface) {
	f := addFeed(i, client, "servicecidrs", &networking.ServiceCIDR{}, client.NetworkingV1().ServiceCIDRs(),
		func(*metav1.ListOptions) {},
		i.upsertServiceCIDR,
		func(n model.NamespacedName) {
			i.reports.forget(kindServiceCIDR, n)
			i.setServiceCIDR(n.Name, nil)
		})
	f.optional = true
}

func (i *Informer) upsertServiceCIDR(c *networking.ServiceCIDR) {
	cidrs, ds := convert.ServiceCIDR(c)
	i.reports.dropped(kindServiceCIDR, c, ds, false)
	i.setServiceCIDR(c.Name, cidrs)
}

func (i *Informer) setServiceCIDR(name string, cidrs []netip.Prefix) {
	i.mu.Lock()
	old, had := i.cidrs[name]
	if cidrs == nil {
		delete(i.cidrs, name)
	} else {
		i.cidrs[name] = cidrs
	}
	changed := had != (cidrs != nil) || !slices.Equal(old, cidrs)
	i.cidrsDirty = i.cidrsDirty || changed
	i.mu.Unlock()
	if changed {
		i.notify(KindService, time.Time{})
	}
}

// serviceCIDRs lists every known range; the caller holds i.mu.
func (i *Informer) serviceCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, c := range i.cidrs {
		out = append(out, c...)
	}
	return out
}
