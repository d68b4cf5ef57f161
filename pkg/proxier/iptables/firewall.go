package iptables

import (
	"net/netip"

	"github.com/proxyd/proxyd/pkg/model"
)

// guard returns sp's loadBalancerSourceRanges of the family and the
// load-balancer IPs they guard; none when either is empty. NodePorts,
// external IPs and the ClusterIP are not guarded, as in kube-proxy.
func (r *renderer) guard(sp *model.ServicePort) ([]netip.Prefix, map[netip.Addr]bool) {
	ranges := familyCIDRs(sp.SourceRanges, r.fam)
	if len(ranges) == 0 {
		return nil, nil
	}
	var guarded map[netip.Addr]bool
	for _, ip := range sp.LoadBalancerIPs {
		if model.FamilyOf(ip) == r.fam {
			if guarded == nil {
				guarded = map[netip.Addr]bool{}
			}
			guarded[ip] = true
		}
	}
	return ranges, guarded
}

// firewall renders sp's firewall chain: each admitted range goes on to the
// external chain (or, with nothing to serve it, back to be refused), every
// other source is marked for filter to drop.
func (r *renderer) firewall(t *restoreText, sp *model.ServicePort, ranges []netip.Prefix, hasExt bool) string {
	fc := fwChain(sp.Key)
	t.natChain(fc)
	admit := "RETURN"
	if hasExt {
		admit = extChain(sp.Key)
	}
	comment := quoteComment(portName(sp.Key) + " loadbalancer IP")
	for _, p := range ranges {
		t.rule(&t.natRules, fc, "-s", p.String(), "-m", "comment", "--comment", comment, "-j", admit)
	}
	t.rule(&t.natRules, fc, "-m", "comment", "--comment", comment, "-j", ChainMarkDrop)
	return fc
}
