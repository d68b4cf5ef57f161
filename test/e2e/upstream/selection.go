package main

import (
	"regexp"
	"strings"
)

// focus selects the upstream tests that exercise a Service proxy: every
// test under test/e2e/network whose traffic goes through Service rules.
var focus = []string{
	`\[sig-network\] Services `,
	`\[sig-network\] Conntrack `,
	`\[sig-network\] Networking Granular Checks: Services `,
	`\[sig-network\] Networking should check kube-proxy urls`,
	`\[sig-network\] KubeProxy `,
	`\[sig-network\] NoSNAT `,
	`\[sig-network\] LocalhostNodePorts `,
	`\[sig-network\] Connectivity Pod Lifecycle `,
	`\[sig-network\] Service CIDRs `,
	`\[sig-network\] Traffic Distribution `,
	`\[sig-network\] Topology Hints `,
}

// notSelected are the groups of test/e2e/network the focus leaves out, and
// why: none sends traffic through Service rules a proxy writes, or the lab
// cannot offer what they test.
var notSelected = []exclusion{
	{"[sig-network] LoadBalancers, LoadBalancers ExternalTrafficPolicy: Local", "need a cloud load balancer (provider local has none)"},
	{"[sig-network] [Feature:IPv6DualStack]", "need a dual-stack cluster; the cluster lab's Pods are IPv4 only (kube-controller-manager allocates IPv4 Pod CIDRs)"},
	{"[sig-network] Networking IPerf2", "a throughput benchmark, not a pass/fail check of the proxy"},
	{"[sig-network] DNS, DNS HostNetwork, DNS configMap nameserver", "test CoreDNS; they reach it through the kube-dns Service, which every selected test exercises too"},
	{"[sig-network] Networking Granular Checks: Pods, Networking (Internet connection, static URL paths)", "Pod-to-Pod and egress networking (the CNI), no Service"},
	{"[sig-network] Proxy", "the apiserver's proxy subresource, which dials Pods directly"},
	{"[sig-network] Endpoints, EndpointsController, EndpointSlice, EndpointSliceMirroring, Service endpoints latency, ServiceCIDR and IPAddress API", "controllers and API objects; no traffic"},
	{"[sig-network] HostPort, Ingress API, IngressClass, NetworkPolicy", "CNI port mapping, Ingress and NetworkPolicy implementations, not the Service proxy"},
}

// exclusion is a pattern of selected tests that are not run, and why.
type exclusion struct {
	pattern, reason string
}

// exclusions are the only tests of the selection left out: the one that
// restarts the control plane, and SCTP, which this kernel cannot speak
// (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT).
var exclusions = []exclusion{
	{`restarting apiserver`, "restarts kube-apiserver (a disruptive control-plane restart)"},
	{`SCTP|sctp`, "SCTP: this kernel has no SCTP (protocol not supported), for any proxy"},
}

func focusRegexp() string { return strings.Join(focus, "|") }

func skipRegexp() string {
	var p []string
	for _, e := range exclusions {
		p = append(p, e.pattern)
	}
	return strings.Join(p, "|")
}

// selected reports whether name is in the focus, and if it is excluded,
// why.
func selected(name string) (in bool, excludedBecause string) {
	if !regexp.MustCompile(focusRegexp()).MatchString(name) {
		return false, ""
	}
	for _, e := range exclusions {
		if regexp.MustCompile(e.pattern).MatchString(name) {
			return true, e.reason
		}
	}
	return true, ""
}
