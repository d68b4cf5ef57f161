package balance

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descTotal = prometheus.NewDesc("proxyd_service_established_connections",
		"Established TCP connections through this node to the Service's endpoints, at the last conntrack walk",
		[]string{"namespace", "service"}, nil)
	descMaxShare = prometheus.NewDesc("proxyd_service_connections_max_endpoint_share",
		"The largest fraction of the Service's established connections that one endpoint holds",
		[]string{"namespace", "service"}, nil)
	descIdle = prometheus.NewDesc("proxyd_service_endpoints_without_connections",
		"Ready endpoints this node may send the Service's connections to that hold none",
		[]string{"namespace", "service"}, nil)
	descEndpoint = prometheus.NewDesc("proxyd_endpoint_established_connections",
		"Established TCP connections per endpoint (every Service with --balance-endpoint-metrics, else the most imbalanced)",
		[]string{"namespace", "service", "endpoint"}, nil)
	descEntries = prometheus.NewDesc("proxyd_balance_conntrack_entries",
		"Conntrack entries read by the last walk of the connection-balance collector", nil, nil)
	descTook = prometheus.NewDesc("proxyd_balance_walk_duration_seconds",
		"How long the last walk of the conntrack table took", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTotal, descMaxShare, descIdle, descEndpoint, descEntries, descTook} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the series of the last walk,
// for Services with at least one established connection, so the number
// of series follows the Services in use rather than those that exist.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	res, at := c.last, c.scanAt
	c.mu.Unlock()
	if at.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(res.entries))
	ch <- prometheus.MustNewConstMetric(descTook, prometheus.GaugeValue, res.took.Seconds())
	perEndpoint := map[int]bool{}
	if c.cfg.EndpointSeries {
		for i := range res.services {
			perEndpoint[i] = true
		}
	} else if c.cfg.TopK > 0 {
		order := make([]int, len(res.services))
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(a, b int) int {
			ia, ib := res.services[a].imbalance(), res.services[b].imbalance()
			switch {
			case ia > ib:
				return -1
			case ia < ib:
				return 1
			}
			return res.services[b].Total - res.services[a].Total
		})
		for _, i := range order[:min(c.cfg.TopK, len(order))] {
			if res.services[i].imbalance() > 0 {
				perEndpoint[i] = true
			}
		}
	}
	for i, s := range res.services {
		ns, name := s.Service.Namespace, s.Service.Name
		ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(s.Total), ns, name)
		ch <- prometheus.MustNewConstMetric(descMaxShare, prometheus.GaugeValue, s.MaxShare, ns, name)
		ch <- prometheus.MustNewConstMetric(descIdle, prometheus.GaugeValue, float64(s.Idle), ns, name)
		if !perEndpoint[i] {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Candidate || e.Connections > 0 {
				ch <- prometheus.MustNewConstMetric(descEndpoint, prometheus.GaugeValue, float64(e.Connections), ns, name, e.IP.String())
			}
		}
	}
}
