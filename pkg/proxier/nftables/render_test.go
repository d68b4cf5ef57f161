package nftables

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/internal/golden"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func TestRenderGolden(t *testing.T) {
	st := flowspec.State()
	golden.Check(t, "flowspec-ipv4.nft", Render(st, flowspec.Config(), model.IPv4).String())
	golden.Check(t, "flowspec-ipv6.nft", Render(st, flowspec.Config(), model.IPv6).String())
}

func TestPacketFlowSpec(t *testing.T) {
	st := flowspec.State()
	tracer := newTracer(Render(st, flowspec.Config(), model.IPv4), Render(st, flowspec.Config(), model.IPv6))
	flowspec.Run(t, tracer)
	flowspec.RunExternal(t, tracer)
	flowspec.RunAffinity(t, tracer)
}

func TestRenderIsDeterministic(t *testing.T) {
	a := Render(flowspec.State(), flowspec.Config(), model.IPv4).String()
	for range 20 {
		if b := Render(flowspec.State(), flowspec.Config(), model.IPv4).String(); b != a {
			t.Fatalf("two renderings of one State differ:\n%s\n%s", a, b)
		}
	}
}

// The rules do not grow with ClusterIP service ports: each is one
// dispatch element and one endpoint-map element per endpoint, and all
// ports of a protocol and endpoint count share one pick chain.
func TestRulesDoNotGrowWithClusterIPPorts(t *testing.T) {
	st := bigState(100, 10)
	r := Render(st, flowspec.Config(), model.IPv4)
	var perPort []string
	for _, c := range r.Chains {
		if c.Base == nil && !strings.HasPrefix(c.Name, pickChainPrefix) {
			perPort = append(perPort, c.Name)
		}
	}
	counts := map[string]int{}
	for _, s := range r.Sets {
		counts[s.Name] = len(s.Elements)
	}
	if len(perPort) != 0 || r.Chain(PickChain(model.TCP, 10)) == nil || counts[ServiceIPsMap] != 100 || counts[EndpointsMap(model.TCP)] != 100*10 {
		t.Errorf("100 services × 10 endpoints: chains of their own %v, %d dispatch elements, %d endpoint elements; want none, 100 and 1000",
			perPort, counts[ServiceIPsMap], counts[EndpointsMap(model.TCP)])
	}
}

// incremental returns the plan from before to after and checks, on the
// fake kernel, that it leaves exactly after's table.
func incremental(t *testing.T, before, after *model.State) Plan {
	t.Helper()
	cfg := flowspec.Config()
	r, w := renderAll(before, cfg, model.IPv4)
	table := tableOf(r)
	p := w.update(after, model.Compute(before, after).Changed(), cfg, model.IPv4)
	if err := table.apply(p); err != nil {
		t.Fatalf("the kernel would refuse the plan: %v\n%s", err, p)
	}
	if got, want := table.String(), tableOf(Render(after, cfg, model.IPv4)).String(); got != want {
		t.Fatalf("after the plan the table differs from a fresh render\n--- got\n%s\n--- want\n%s\n--- plan\n%s", got, want, p)
	}
	return p
}

func TestIncrementalPlanWritesOnlyWhatChanged(t *testing.T) {
	before := bigState(3, 3)
	t.Run("no change writes nothing", func(t *testing.T) {
		if p := incremental(t, before, bigState(3, 3)); !p.Empty() {
			t.Errorf("plan:\n%s", p)
		}
	})
	t.Run("an endpoint change writes map elements and no rule", func(t *testing.T) {
		after := withEndpoints(before, 1, 2)
		golden.Check(t, "plan-endpoint-removed.txt", incremental(t, before, after).String())
	})
	t.Run("a new and a deleted Service add and delete a chain and its elements", func(t *testing.T) {
		after := bigState(3, 3)
		delete(after.Services, svcKey(0))
		extra := bigState(4, 3).Services[svcKey(3)]
		after.Services[extra.Key] = extra
		golden.Check(t, "plan-service-added-removed.txt", incremental(t, before, after).String())
	})
	t.Run("losing every endpoint moves the port from its chain to the reject set", func(t *testing.T) {
		golden.Check(t, "plan-endpoints-gone.txt", incremental(t, before, withEndpoints(before, 2, 0)).String())
	})
}

// withEndpoints is s with port i keeping only its first n usable endpoints.
func withEndpoints(s *model.State, i, n int) *model.State {
	next := &model.State{Node: s.Node, ServiceCIDRs: s.ServiceCIDRs, Services: maps.Clone(s.Services)}
	sp := *next.Services[svcKey(i)]
	sp.ClusterEndpoints = sp.ClusterEndpoints[:n]
	next.Services[sp.Key] = &sp
	return next
}

// Random walks of changes: after every step the incrementally written
// table equals a fresh rendering, and the fake kernel accepts every plan.
func TestIncrementalPlansMatchFullRenderingsOnRandomChanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	cfg := flowspec.Config()
	pool := bigState(12, 4) // the universe the walk draws from
	state := &model.State{Services: map[model.ServicePortKey]*model.ServicePort{}}
	r, w := renderAll(state, cfg, model.IPv4)
	table := tableOf(r)
	for step := range 1000 {
		next := &model.State{Services: maps.Clone(state.Services)}
		idx := rng.IntN(12)
		k := svcKey(idx)
		switch rng.IntN(3) {
		case 0:
			delete(next.Services, k)
		default:
			sp := *pool.Services[k]
			n := rng.IntN(len(sp.ClusterEndpoints) + 1)
			sp.ClusterEndpoints = slices.Clone(sp.ClusterEndpoints[rng.IntN(len(sp.ClusterEndpoints)-n+1):][:n])
			if rng.IntN(5) == 0 { // internalTrafficPolicy Local, served only elsewhere: dropped
				sp.InternalLocal, sp.ClusterEndpoints = true, nil
			}
			if rng.IntN(4) == 0 { // another port of the same VIP
				sp.ClusterIPs = pool.Services[svcKey(0)].ClusterIPs
				sp.Key.Port, sp.Port = "alt", uint16(1000+idx)
			}
			switch rng.IntN(3) { // external traffic, with either policy
			case 0:
				alt := 0 // node ports are unique in a cluster, so are external IP:ports
				if sp.Key.Port == "alt" {
					alt = 100
				}
				sp.NodePort, sp.ExternalLocal = uint16(30000+alt+idx), rng.IntN(2) == 0
				if rng.IntN(2) == 0 {
					sp.ExternalIPs = []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(alt + idx)})}
					if rng.IntN(2) == 0 { // a load balancer, guarded or not
						sp.LoadBalancerIPs = sp.ExternalIPs
						sp.SourceRanges = [][]netip.Prefix{nil, {netip.MustParsePrefix("198.51.100.0/24")},
							{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.0/24")}}[rng.IntN(3)]
					}
				}
				if rng.IntN(2) == 0 && len(sp.ClusterEndpoints) > 0 {
					local := sp.ClusterEndpoints[0]
					local.NodeName = "node1"
					sp.Endpoints = []model.Endpoint{local}
				}
				sp.ExternalEndpoints = model.SelectExternalEndpoints(&sp, model.Node{Name: "node1"})
			}
			next.Services[sp.Key] = &sp
		}
		p := w.update(next, model.Compute(state, next).Changed(), cfg, model.IPv4)
		if err := table.apply(p); err != nil {
			t.Fatalf("step %d: the kernel would refuse the plan: %v\n%s", step, err, p)
		}
		if got, want := table.String(), tableOf(Render(next, cfg, model.IPv4)).String(); got != want {
			t.Fatalf("step %d: table differs from a fresh render\n--- got\n%s\n--- want\n%s\n--- plan\n%s", step, got, want, p)
		}
		state = next
	}
}

func svcKey(i int) model.ServicePortKey {
	return model.ServicePortKey{Namespace: "bench", Name: fmt.Sprintf("svc-%05d", i), Port: "http", Protocol: model.TCP}
}

// bigState has n Services with eps ready endpoints each.
func bigState(n, eps int) *model.State { return model.Build(bigSnapshot(n, eps)) }

func bigSnapshot(n, eps int) model.Snapshot {
	snap := model.Snapshot{Node: model.Node{Name: "node1"}, Services: map[model.NamespacedName]*model.Service{}, Slices: map[model.NamespacedName]*model.EndpointSlice{}}
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		snap.Services[model.NamespacedName{Namespace: "bench", Name: name}] = &model.Service{Namespace: "bench", Name: name,
			ClusterIPs: []netip.Addr{vip}, Ports: []model.ServicePortSpec{{Name: "http", Protocol: model.TCP, Port: 80}}}
		es := &model.EndpointSlice{Namespace: "bench", Name: name + "-1", ServiceName: name, Family: model.IPv4,
			Ports: []model.SlicePort{{Name: "http", Protocol: model.TCP, Port: 8080}}}
		for j := range eps {
			ip := netip.AddrFrom4([4]byte{10, byte(128 + (i*eps+j)>>16), byte((i*eps + j) >> 8), byte(i*eps + j)})
			es.Endpoints = append(es.Endpoints, model.SliceEndpoint{Addresses: []netip.Addr{ip}, Ready: true, Serving: true})
		}
		snap.Slices[model.NamespacedName{Namespace: "bench", Name: es.Name}] = es
	}
	return snap
}

func TestNodePortAddressesPinTheNodePorts(t *testing.T) {
	cfg := flowspec.Config()
	cfg.NodePortPrimary = true
	st := flowspec.State()
	r := Render(st, cfg, model.IPv4)
	text := r.String()
	if !strings.Contains(text, "ip daddr 10.88.0.2 meta l4proto . th dport vmap @service-nodeports") || strings.Contains(text, "fib daddr type local") {
		t.Errorf("NodePorts are not pinned to the primary address:\n%s", text)
	}
	tracer := newTracer(r, Render(st, cfg, model.IPv6))
	flowspec.RunExternal(t, tracer) // the spec's NodePorts are all on the primary address
}
