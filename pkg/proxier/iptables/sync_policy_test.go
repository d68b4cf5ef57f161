package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// Partial syncs of the node-dependent and policy-dependent rules.

func TestLocalhostNodePortsCountTheirGuard(t *testing.T) {
	cfg := flowspec.Config()
	cfg.LocalhostNodePorts = true
	tp := newTestProxier(t, cfg)
	tp.sync(t, flowspec.State())
	tp.wantStatsMatchKernel(t)
	tp.sync(t, withPort(flowspec.State(), webKey, func(sp *model.ServicePort) { sp.NodePort = 30090; selectExternal(sp) }))
	tp.wantStatsMatchKernel(t)
	tp.wantKernelMatchesFullWrite(t, cfg, withPort(flowspec.State(), webKey, func(sp *model.ServicePort) { sp.NodePort = 30090; selectExternal(sp) }))
}

// A port flipping between "no local endpoint, drop" and "a local endpoint"
// is written by a partial sync that leaves the kernel as a full write would.
func TestPartialSyncOfTheInternalLocalDrop(t *testing.T) {
	cfg := flowspec.Config()
	k := model.ServicePortKey{Namespace: "default", Name: "localremote", Port: "p", Protocol: model.TCP}
	local := model.Endpoint{IP: flowspec.Pod1, Port: flowspec.EchoPort, Ready: true, Serving: true, NodeName: flowspec.NodeName}
	gains := withPort(flowspec.State(), k, func(sp *model.ServicePort) {
		sp.Endpoints = append([]model.Endpoint{local}, sp.Endpoints...)
		sp.ClusterEndpoints = []model.Endpoint{local}
	})
	loses := withPort(flowspec.State(), k, func(sp *model.ServicePort) { sp.Endpoints, sp.ClusterEndpoints, sp.ExternalEndpoints = nil, nil, nil })
	// Only the remote endpoint's readiness changes: no chain of the port
	// changes, only its ClusterIP's verdict (drop, then refuse).
	notReady := withPort(flowspec.State(), k, func(sp *model.ServicePort) {
		sp.NodePort, sp.ExternalEndpoints = 0, nil
		sp.Endpoints = slices.Clone(sp.Endpoints)
		sp.Endpoints[0].Ready, sp.Endpoints[0].Serving = false, false
	})
	noNodePort := withPort(flowspec.State(), k, func(sp *model.ServicePort) { sp.NodePort, sp.ExternalEndpoints = 0, nil })
	tp := newTestProxier(t, cfg)
	tp.sync(t, flowspec.State())
	for _, st := range []*model.State{gains, flowspec.State(), loses, flowspec.State(), noNodePort, notReady, noNodePort} {
		if s := tp.sync(t, st); s.Full {
			t.Fatal("sync was full")
		}
		tp.wantKernelMatchesFullWrite(t, cfg, st)
		tp.wantStatsMatchKernel(t)
	}
}

// --nodeport-addresses pins NodePorts to the node's addresses; a change of
// the node's address rewrites the jumps on a partial sync.
func TestNodePortAddressesFollowTheNode(t *testing.T) {
	cfg := flowspec.Config()
	cfg.NodePortPrimary = true
	tp := newTestProxier(t, cfg)
	tp.sync(t, flowspec.State())
	saved := string(tp.kernels[model.IPv4].saveAll())
	if !strings.Contains(saved, "-A PROXYD-SERVICES -d 10.88.0.2/32 -m comment") || strings.Contains(saved, "--dst-type LOCAL -j PROXYD-NODEPORTS") {
		t.Errorf("NodePorts are not pinned to the primary address:\n%s", saved)
	}
	tr, err := NewTracer(tp.kernels[model.IPv4].saveAll(), tp.kernels[model.IPv6].saveAll())
	if err != nil {
		t.Fatal(err)
	}
	flowspec.RunExternal(t, tr)

	moved := flowspec.State()
	moved.Node.IPs = []netip.Addr{netip.MustParseAddr("10.88.0.3")}
	if s := tp.sync(t, moved); s.Full {
		t.Fatal("sync was full")
	}
	tp.wantKernelMatchesFullWrite(t, cfg, moved)
	tp.wantStatsMatchKernel(t)
	if saved := string(tp.kernels[model.IPv4].saveAll()); !strings.Contains(saved, "-d 10.88.0.3/32") || strings.Contains(saved, "-d 10.88.0.2/32 -m comment") {
		t.Errorf("the jump did not follow the node's address:\n%s", saved)
	}
}
