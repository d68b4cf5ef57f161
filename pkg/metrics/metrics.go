// Package metrics defines proxyd's Prometheus metrics under kube-proxy's
// names and meanings, so dashboards and alerts built for kube-proxy keep
// working when a node switches to proxyd.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/proxyd/proxyd/pkg/model"
)

// Metrics holds every metric proxyd exports.
type Metrics struct {
	Registry *prometheus.Registry

	SyncDuration        prometheus.Histogram
	SyncFullDuration    prometheus.Histogram
	SyncPartialDuration prometheus.Histogram
	LastSync            prometheus.Gauge
	LastQueued          prometheus.Gauge
	NetworkProgramming  prometheus.Histogram
	EndpointsPending    prometheus.Gauge
	EndpointsTotal      prometheus.Counter
	ServicesPending     prometheus.Gauge
	ServicesTotal       prometheus.Counter
	SyncFailures        *prometheus.CounterVec
	// PartialFailures counts failed partial syncs (iptables mode only;
	// nil otherwise), each also counted in SyncFailures.
	PartialFailures   *prometheus.CounterVec
	KernelObjects     prometheus.Counter
	Syncs             *prometheus.CounterVec
	HealthzTotal      *prometheus.CounterVec
	LivezTotal        *prometheus.CounterVec
	NoLocalEndpoints  *prometheus.GaugeVec
	ConntrackDeleted  *prometheus.CounterVec
	ConntrackDuration *prometheus.HistogramVec
	// ServiceConflicts counts the destinations two service ports claim
	// (see model.Conflict) right now.
	ServiceConflicts prometheus.Gauge
	// RefusedPorts counts the service ports whose rules the kernel
	// refused and that wait for a retry.
	RefusedPorts prometheus.Gauge
	// DriftRepairs counts repairs of rules someone else changed, by mode.
	DriftRepairs *prometheus.CounterVec

	// What each port counts in NoLocalEndpoints, and the totals.
	noLocal       map[model.ServicePortKey][]noLocalKey
	noLocalCounts map[noLocalKey]int
}

func syncBuckets() []float64 { return prometheus.ExponentialBuckets(0.001, 2, 15) }

// programmingBuckets are kube-proxy's network programming latency buckets.
func programmingBuckets() []float64 {
	var b []float64
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)
	return b
}

// New registers the metrics in a fresh registry. mode selects the name of
// the failure counter kube-proxy uses for that mode: nftables mode has its
// own; iptables and ipvs mode both count failed syncs as
// kubeproxy_sync_proxy_rules_iptables_restore_failures_total, the only
// failure counter kube-proxy's ipvs mode registers (it counts the
// iptables-restore of its filter and NAT rules there), so that name is
// also what any other mode gets.
func New(mode string) *Metrics {
	failureName := "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"
	if mode == "nftables" {
		failureName = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total"
	}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_proxy_rules_duration_seconds", Help: "SyncProxyRules latency in seconds", Buckets: syncBuckets()}),
		SyncFullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_full_proxy_rules_duration_seconds", Help: "SyncProxyRules latency in seconds for full resyncs", Buckets: syncBuckets()}),
		SyncPartialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_partial_proxy_rules_duration_seconds", Help: "SyncProxyRules latency in seconds for partial resyncs", Buckets: syncBuckets()}),
		LastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds", Help: "The last time proxy rules were successfully synced"}),
		LastQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", Help: "The last time a sync of proxy rules was queued"}),
		NetworkProgramming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_network_programming_duration_seconds", Help: "In Cluster Network Programming Latency in seconds", Buckets: programmingBuckets()}),
		EndpointsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_pending", Help: "Pending proxy rules Endpoint changes"}),
		EndpointsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_endpoint_changes_total", Help: "Cumulative proxy rules Endpoint changes"}),
		ServicesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_pending", Help: "Pending proxy rules Service changes"}),
		ServicesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_service_changes_total", Help: "Cumulative proxy rules Service changes"}),
		SyncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: failureName, Help: "Cumulative proxy rules sync failures"}, []string{"ip_family"}),
		KernelObjects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "proxyd_kernel_objects_written_total", Help: "Rules, chains and set elements written to the kernel"}),
		Syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxyd_syncs_total", Help: "Syncs by result: full, partial, skipped (nothing to write) or error"}, []string{"result"}),
		HealthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_healthz_total", Help: "Cumulative proxy healthz HTTP status"}, []string{"code"}),
		LivezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_proxy_livez_total", Help: "Cumulative proxy livez HTTP status"}, []string{"code"}),
		NoLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_no_local_endpoints_total", Help: "Number of services with a Local traffic policy and no endpoints"},
			[]string{"traffic_policy", "ip_family"}),
		ConntrackDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_conntrack_reconciler_deleted_entries_total", Help: "Cumulative conntrack flows deleted by conntrack reconciler"},
			[]string{"ip_family"}),
		ConntrackDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kubeproxy_conntrack_reconciler_sync_duration_seconds", Help: "ReconcileConntrackFlowsLatency latency in seconds",
			Buckets: syncBuckets()}, []string{"ip_family"}),
		ServiceConflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "proxyd_service_conflicts", Help: "Claims on one address, port and protocol (or NodePort) that a Service lost to another, now"}),
		RefusedPorts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "proxyd_sync_refused_service_ports", Help: "Service ports whose rules the kernel refused, retried with backoff, now"}),
		DriftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "proxyd_drift_repairs_total", Help: "Repairs of proxyd's kernel rules after someone else changed them"}, []string{"mode"}),
	}
	if mode == "iptables" {
		m.PartialFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total", Help: "Cumulative proxy iptables partial restore failures"},
			[]string{"ip_family"})
		m.Registry.MustRegister(m.PartialFailures)
	}
	m.Registry.MustRegister(m.SyncDuration, m.SyncFullDuration, m.SyncPartialDuration, m.LastSync, m.LastQueued,
		m.NetworkProgramming, m.EndpointsPending, m.EndpointsTotal, m.ServicesPending, m.ServicesTotal,
		m.SyncFailures, m.KernelObjects, m.Syncs, m.HealthzTotal, m.LivezTotal, m.NoLocalEndpoints, m.ConntrackDeleted,
		m.ConntrackDuration, m.ServiceConflicts, m.RefusedPorts, m.DriftRepairs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// noLocalKey is one series of kubeproxy_sync_proxy_rules_no_local_endpoints_total.
type noLocalKey struct{ policy, family string }

// SetNoLocalEndpoints sets kubeproxy_sync_proxy_rules_no_local_endpoints_total
// from s: per family, the service ports whose Local traffic policy leaves
// them no endpoint on this node while other nodes have usable ones.
func (m *Metrics) SetNoLocalEndpoints(s *model.State) {
	m.noLocal = nil
	keys := make([]model.ServicePortKey, 0, len(s.Services))
	for k := range s.Services {
		keys = append(keys, k)
	}
	m.UpdateNoLocalEndpoints(s, keys)
}

// UpdateNoLocalEndpoints is SetNoLocalEndpoints for the ports changed of
// s alone (a removed port is absent from s): the counts of the others are
// kept from earlier calls, so a sync pays for what it changed.
func (m *Metrics) UpdateNoLocalEndpoints(s *model.State, changed []model.ServicePortKey) {
	if m.noLocal == nil {
		m.noLocal = map[model.ServicePortKey][]noLocalKey{}
		m.noLocalCounts = map[noLocalKey]int{}
		for _, f := range []model.IPFamily{model.IPv4, model.IPv6} {
			for _, p := range []string{"internal", "external"} {
				m.noLocalCounts[noLocalKey{p, f.String()}] = 0
			}
		}
	}
	for _, k := range changed {
		for _, c := range m.noLocal[k] {
			m.noLocalCounts[c]--
		}
		delete(m.noLocal, k)
		if sp := s.Services[k]; sp != nil {
			if c := noLocal(sp); len(c) > 0 {
				m.noLocal[k] = c
				for _, c := range c {
					m.noLocalCounts[c]++
				}
			}
		}
	}
	for c, n := range m.noLocalCounts {
		m.NoLocalEndpoints.WithLabelValues(c.policy, c.family).Set(float64(n))
	}
}

// noLocal lists the series a port counts in.
func noLocal(sp *model.ServicePort) []noLocalKey {
	if !sp.InternalLocal && !(sp.ExternalLocal && sp.HasExternal()) {
		return nil
	}
	var out []noLocalKey
	for _, ip := range sp.ClusterIPs {
		f := model.FamilyOf(ip)
		if !model.Usable(model.EndpointsOf(sp.Endpoints, f)) {
			continue
		}
		if sp.InternalLocal && len(model.EndpointsOf(sp.ClusterEndpoints, f)) == 0 {
			out = append(out, noLocalKey{"internal", f.String()})
		}
		if sp.ExternalLocal && sp.HasExternal() && len(model.EndpointsOf(sp.ExternalEndpoints, f)) == 0 {
			out = append(out, noLocalKey{"external", f.String()})
		}
	}
	return out
}
