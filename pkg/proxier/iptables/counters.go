package iptables

import (
	"k8s.io/klog/v2"
)

// The nfacct counters kube-proxy's iptables mode bumps from its rules,
// under kube-proxy's names, which its metrics
// kubeproxy_iptables_localhost_nodeports_accepted_packets_total and
// kubeproxy_iptables_ct_state_invalid_dropped_packets_total read.
const (
	// CounterLocalhostNodePorts counts packets to a NodePort on
	// 127.0.0.0/8 that proxyd sends on to the Service.
	CounterLocalhostNodePorts = "localhost_nps_accepted_pkts"
	// CounterInvalidDropped counts forwarded packets dropped because
	// conntrack found them INVALID.
	CounterInvalidDropped = "ct_state_invalid_dropped_pkts"
)

// Counters says which nfacct counters the rules bump. A rule may name a
// counter only while it exists (iptables-restore refuses it otherwise), so
// a full write first ensures them and renders with those it has.
type Counters struct {
	LocalhostNodePorts bool
	InvalidDropped     bool
}

// WithCounters makes a full write ensure the nfacct counters with ensure
// (create one unless it exists) and bump those it has from the rules;
// proxyd passes internal/nfacct's Ensure. Without this option no rule
// counts.
func WithCounters(ensure func(name string) error) Option {
	return func(o *options) { o.ensure = ensure }
}

// ensureCounters ensures the counters before a full write and returns
// those that exist. A kernel without nfnetlink_acct or xt_nfacct never
// fails a sync: its rules just do not count (logged once, then again
// whenever that changes).
func (p *Proxier) ensureCounters() Counters {
	if p.ensure == nil {
		return Counters{}
	}
	var c Counters
	var failed error
	for _, x := range []struct {
		name string
		on   *bool
	}{{CounterLocalhostNodePorts, &c.LocalhostNodePorts}, {CounterInvalidDropped, &c.InvalidDropped}} {
		if err := p.ensure(x.name); err != nil {
			failed = err
			continue
		}
		*x.on = true
	}
	if c != p.counters || !p.countersLogged {
		if failed != nil {
			klog.ErrorS(failed, "The kernel's nfacct counters are not available: the rules do not count, and kubeproxy_iptables_localhost_nodeports_accepted_packets_total and kubeproxy_iptables_ct_state_invalid_dropped_packets_total are not exported")
		} else {
			klog.V(2).InfoS("Counting with nfacct", "counters", []string{CounterLocalhostNodePorts, CounterInvalidDropped})
		}
		p.countersLogged = true
	}
	p.counters = c
	return c
}

// Counters are the nfacct counters the last full write's rules bump.
func (p *Proxier) Counters() Counters {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counters
}
