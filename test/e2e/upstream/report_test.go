package main

import (
	"reflect"
	"testing"
)

func TestParseJUnitKeepsRunTestsUnderTheirListedNames(t *testing.T) {
	got, err := parseJUnit("testdata/junit.xml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Result{
		"[sig-network] Services should serve a basic endpoint from pods [Conformance]": {State: "passed", Seconds: 12.5},
		"[sig-network] Conntrack should be able to preserve UDP traffic when server pod cycles for a NodePort service": {
			State: "failed", Seconds: 60, Message: "[FAILED] Failed to connect to backend 2\nIn [It] at: conntrack.go:270"},
		"[sig-network] NoSNAT Should be able to send traffic between Pods without SNAT": {
			State: "skipped", Seconds: 0.2, Message: "skipped - Test requires >= 3 Ready nodes"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseJUnit =\n%#v\nwant\n%#v", got, want)
	}
}

func TestCellSaysWhenRunsDisagree(t *testing.T) {
	run := func(state string) Run { return Run{Tests: map[string]Result{"t": {State: state}}} }
	for _, tc := range []struct {
		name   string
		states []string
		want   string
	}{
		{"one pass", []string{"passed"}, "pass"},
		{"three passes", []string{"passed", "passed", "passed"}, "pass"},
		{"one failure of three", []string{"passed", "failed", "passed"}, "flaky: 2 pass, 1 fail, 0 skip"},
		{"failed every time", []string{"failed", "failed", "failed"}, "fail 3/3"},
		{"skipped", []string{"skipped"}, "skip"},
		{"no run", nil, "—"},
		{"could not run", []string{"notrun"}, "not run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c column
			for _, s := range tc.states {
				if s == "notrun" {
					c.runs = append(c.runs, Run{NotRun: "no ip_vs"})
					continue
				}
				c.runs = append(c.runs, run(s))
			}
			if got := c.cell("t"); got != tc.want {
				t.Errorf("cell = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSelectionExcludesOnlyControlPlaneRestartsAndSCTP(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       bool
		excluded bool
	}{
		{"[sig-network] Services should work after restarting apiserver [Disruptive]", true, true},
		{"[sig-network] Services should work after restarting kube-proxy [Disruptive]", true, false},
		{"[sig-network] Networking Granular Checks: Services should function for pod-Service: sctp [Feature:SCTPConnectivity]", true, true},
		{"[sig-network] Services should serve endpoints on same port and different protocol for internal traffic on Type LoadBalancer", true, false},
		{"[sig-network] Networking should check kube-proxy urls", true, false},
		{"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]", false, false},
		{"[sig-network] DNS should provide DNS for services [Conformance]", false, false},
	} {
		in, why := selected(tc.name)
		if in != tc.in || (why != "") != tc.excluded {
			t.Errorf("%s: selected %v, excluded %q; want %v, %v", tc.name, in, why, tc.in, tc.excluded)
		}
	}
}
