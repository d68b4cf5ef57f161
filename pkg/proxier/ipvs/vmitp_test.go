//go:build ipvsvm

package ipvs

import (
	"context"
	"net/netip"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// TestVMInternalLocalDrop checks internalTrafficPolicy Local on real
// packets: a ClusterIP whose only usable endpoint is on another node drops
// new connections from a Pod and from the node (they time out), one
// without any usable endpoint is refused, and the Service's NodePort (of
// externalTrafficPolicy Cluster) still serves. When a local endpoint
// comes, and goes again, the incremental syncs take effect. The node's
// address is 192.168.99.1, the client's gateway.
func TestVMInternalLocalDrop(t *testing.T) {
	_, pod2, cl, p := twoPods(t)
	// pod1 is on node (this one or another); itpe's endpoint serves nowhere.
	build := func(node string) *model.State {
		pod := itpEndpoint("10.244.1.11:8080", node, true, true, false)
		itp := sp("itp", model.TCP, "10.96.0.72", 80)
		itp.InternalLocal, itp.Endpoints, itp.NodePort = true, []model.Endpoint{pod}, 30072
		itp.ExternalEndpoints = itp.Endpoints // eTP Cluster: not narrowed
		itpe := sp("itpe", model.TCP, "10.96.0.73", 80)
		itpe.InternalLocal, itpe.Endpoints = true, []model.Endpoint{itpEndpoint("10.244.1.11:8080", "node2", false, false, true)}
		s := state(itp, itpe)
		s.Node.IPs = []netip.Addr{addr("192.168.99.1")}
		itp.ClusterEndpoints = model.SelectEndpoints(itp, s.Node)
		itpe.ClusterEndpoints = model.SelectEndpoints(itpe, s.Node)
		return s
	}
	s1 := build("node2")
	if err := p.Sync(context.Background(), s1, model.Compute(nil, s1)); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel table:\n%s", dumpHandle(t, vmHandle(t)))
	check(t, "endpoint on another node", []reach{
		{"a Pod, served only elsewhere", pod2, "10.96.0.72:80", "timeout"},
		{"the node, served only elsewhere", -1, "10.96.0.72:80", "timeout"},
		{"a Pod, no usable endpoint anywhere", pod2, "10.96.0.73:80", "refused"},
		{"the node, no usable endpoint anywhere", -1, "10.96.0.73:80", "refused"},
		{"the NodePort, from a client", cl, "192.168.99.1:30072", "answered"},
		{"the NodePort, from a Pod", pod2, "192.168.99.1:30072", "answered"},
	})

	s2 := build(flowspec.NodeName)
	if err := p.Sync(context.Background(), s2, model.Compute(s1, s2)); err != nil {
		t.Fatal(err)
	}
	if st := p.LastSyncStats(); st.Full || st.KernelOps != 2 {
		t.Errorf("a local endpoint came: %+v, want an incremental real server and firewall write", st)
	}
	check(t, "endpoint on this node", []reach{
		{"a Pod", pod2, "10.96.0.72:80", "answered"},
		{"the node", -1, "10.96.0.72:80", "answered"},
	})

	s3 := build("node2")
	if err := p.Sync(context.Background(), s3, model.Compute(s2, s3)); err != nil {
		t.Fatal(err)
	}
	if st := p.LastSyncStats(); st.Full || st.KernelOps != 2 {
		t.Errorf("the local endpoint went: %+v, want an incremental real server and firewall write", st)
	}
	check(t, "endpoint on another node again", []reach{
		{"a Pod, served only elsewhere", pod2, "10.96.0.72:80", "timeout"},
	})
}
