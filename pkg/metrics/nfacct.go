package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// nfacctCollector exports kernel nfacct counters as Prometheus counters,
// read at each scrape. A counter it cannot read (the kernel lacks nfacct,
// or the mode has not created it yet) is left out of the scrape, as in
// kube-proxy.
type nfacctCollector struct {
	read    func(counter string) (packets uint64, err error)
	metrics []nfacctMetric
}

type nfacctMetric struct {
	counter string
	desc    *prometheus.Desc
}

// CollectNFAcct registers kube-proxy's iptables-mode metrics that count
// packets with nfacct: kubeproxy_iptables_localhost_nodeports_accepted_packets_total
// from the counter localhostNodePorts and
// kubeproxy_iptables_ct_state_invalid_dropped_packets_total from
// invalidDropped. read returns a counter's packets.
func (m *Metrics) CollectNFAcct(localhostNodePorts, invalidDropped string, read func(counter string) (uint64, error)) {
	m.Registry.MustRegister(&nfacctCollector{read: read, metrics: []nfacctMetric{
		{localhostNodePorts, prometheus.NewDesc("kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
			"Number of packets accepted on nodeports of loopback interface", nil, nil)},
		{invalidDropped, prometheus.NewDesc("kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
			"packets dropped by iptables to work around conntrack problems", nil, nil)},
	}})
}

func (c *nfacctCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

func (c *nfacctCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.metrics {
		n, err := c.read(m.counter)
		if err != nil {
			klog.V(4).InfoS("Could not read an nfacct counter", "counter", m.counter, "err", err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(n))
	}
}
