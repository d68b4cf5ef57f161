package ipvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// itpEndpoint is an endpoint on node in the given condition.
func itpEndpoint(ap, node string, ready, serving, terminating bool) model.Endpoint {
	a := addrPort(ap)
	return model.Endpoint{IP: a.Addr(), Port: a.Port(), NodeName: node, Ready: ready, Serving: serving, Terminating: terminating}
}

// itpState is one internalTrafficPolicy Local port on 10.96.0.72:80 (and
// fd00:10:96::72 when an endpoint is IPv6) with the given endpoints, its
// ClusterEndpoints selected by the model for this node.
func itpState(eps ...model.Endpoint) *model.State {
	p := sp("itp", model.TCP, "10.96.0.72", 80)
	p.InternalLocal, p.Endpoints = true, eps
	if slices.ContainsFunc(eps, func(e model.Endpoint) bool { return e.IP.Is6() }) {
		p.ClusterIPs = append(p.ClusterIPs, addr("fd00:10:96::72"))
	}
	s := state(p)
	s.Node.IPs = []netip.Addr{flowspec.NodeIP}
	p.ClusterEndpoints = model.SelectEndpoints(p, s.Node)
	return s
}

var itpV4 = Tuple{addr("10.96.0.72"), model.TCP, 80}

// A port flips into the drop state and out of it with its endpoints'
// conditions: each flip that touches only the drop is one incremental
// firewall write, with the virtual server (no real servers) left alone; a
// change that keeps the drop state writes no firewall at all.
func TestInternalLocalDropFlipsIncrementally(t *testing.T) {
	r := newRig(t)
	const pod, node = "10.244.1.100", "10.88.0.2"
	expect := func(phase string, ops int, drop []Tuple, want flowspec.Verdict) {
		t.Helper()
		st := r.p.LastSyncStats()
		if st.Full || st.KernelOps != ops {
			t.Errorf("%s: %+v, want an incremental sync of %d kernel ops", phase, st, ops)
		}
		if got := r.fw.Current().InternalDrop; !slices.Equal(got, drop) {
			t.Errorf("%s: internal drops in the kernel %v, want %v", phase, got, drop)
		}
		tr := TracerFor(Render(r.last, "rr"), r.fw.Current())
		if got := verdict(tr, pod, "10.96.0.72:80", false); got != want {
			t.Errorf("%s: from a Pod: %v, want %v", phase, got, want)
		}
		if got := verdict(tr, node, "10.96.0.72:80", true); got != want {
			t.Errorf("%s: from the node: %v, want %v", phase, got, want)
		}
	}
	remote := func(ready, serving, terminating bool) model.Endpoint {
		return itpEndpoint("10.244.2.5:8080", "node2", ready, serving, terminating)
	}
	local := itpEndpoint("10.244.1.11:8080", flowspec.NodeName, true, true, false)

	// No usable endpoint anywhere: IPVS refuses, nothing is dropped.
	r.sync(itpState(remote(false, false, false)))
	if got := r.dump(); got != "TCP  10.96.0.72:80 rr\n" {
		t.Fatalf("kernel:\n%s", got)
	}
	applies := r.fw.Applies
	r.sync(itpState(remote(true, true, false)))
	expect("a remote endpoint became ready", 1, []Tuple{itpV4}, flowspec.Drop)
	if got := r.dump(); got != "TCP  10.96.0.72:80 rr\n" {
		t.Errorf("the virtual server stays, without real servers:\n%s", got)
	}
	r.sync(itpState(remote(false, true, true)))
	expect("the remote endpoint is serving and terminating", 0, []Tuple{itpV4}, flowspec.Drop)
	r.sync(itpState(remote(true, true, false), local))
	expect("a local endpoint came", 2, nil, flowspec.DNAT) // its real server, the firewall
	r.sync(itpState(remote(true, true, false)))
	expect("the local endpoint went", 2, []Tuple{itpV4}, flowspec.Drop)
	r.sync(itpState(remote(false, false, true)))
	expect("the remote endpoint stopped serving", 1, nil, flowspec.Reject)
	if n := r.fw.Applies - applies; n != 4 {
		t.Errorf("%d firewall writes, want 4", n)
	}
}

// Each family decides on its own: IPv4 served only elsewhere drops, IPv6
// without any usable endpoint is refused, and a Service without
// internalTrafficPolicy Local never drops.
func TestInternalLocalDropIsPerFamily(t *testing.T) {
	s := itpState(itpEndpoint("10.244.2.5:8080", "node2", true, true, false),
		itpEndpoint("[fd00:10:244:2::5]:8080", "node2", false, false, false))
	tab := Render(s, "rr")
	r := RenderNetfilter(tab, testConfig)
	if !slices.Equal(r.InternalDrop, []Tuple{itpV4}) {
		t.Fatalf("internal drops %v, want only the IPv4 ClusterIP", r.InternalDrop)
	}
	if got := tab.String(); !strings.Contains(got, "TCP  10.96.0.72:80 rr  # default/itp:p/TCP internal local, no local endpoint: drop\n") ||
		!strings.Contains(got, "TCP  [fd00:10:96::72]:80 rr  # default/itp:p/TCP\n") {
		t.Errorf("table:\n%s", got)
	}
	tr := TracerFor(tab, r)
	if got := verdict(tr, "10.244.1.100", "10.96.0.72:80", false); got != flowspec.Drop {
		t.Errorf("IPv4, served elsewhere: %v, want drop", got)
	}
	if got := verdict(tr, "fd00:10:244:1::100", "[fd00:10:96::72]:80", false); got != flowspec.Reject {
		t.Errorf("IPv6, no usable endpoint: %v, want reject", got)
	}
	if got := verdict(tr, "10.244.1.100", "10.96.0.72:81", false); got != flowspec.Reject {
		t.Errorf("another port of the ClusterIP: %v, want reject", got)
	}

	cluster := itpState(itpEndpoint("10.244.2.5:8080", "node2", true, true, false))
	p := cluster.Services[model.ServicePortKey{Namespace: "default", Name: "itp", Port: "p", Protocol: model.TCP}]
	p.InternalLocal, p.ClusterEndpoints = false, nil // as if the model left it none
	if r := RenderNetfilter(Render(cluster, "rr"), testConfig); len(r.InternalDrop) != 0 {
		t.Errorf("internalTrafficPolicy Cluster: internal drops %v, want none", r.InternalDrop)
	}
}
