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

// serial matches the tests that must run alone: ginkgo runs [Serial] ones
// last on one process, but [Disruptive] ones (restarting the proxy's Pods)
// only go alone when asked to.
const serial = `\[Serial\]|\[Disruptive\]`

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
