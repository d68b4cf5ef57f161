package iptables

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

// The property tests drive a Proxier through random changes to the
// informers' view — every field of every Service, EndpointSlice endpoint,
// the node and the ServiceCIDRs — built into States by a model.Builder as
// in production, and check after every partial sync that the fake
// kernel's tables equal a fresh full write of the same State.

// randomSteps is how many changes one run makes.
const randomSteps = 400

// randomConfigs are the node configurations the runs use: the spec's, and
// one with NodePorts pinned to the node's primary address and served on
// loopback, whose rules follow the node's addresses.
func randomConfigs() map[string]proxier.Config {
	pinned := flowspec.Config()
	pinned.NodePortPrimary = true
	pinned.LocalhostNodePorts = true
	return map[string]proxier.Config{"default": flowspec.Config(), "NodePorts on the primary address and loopback": pinned}
}

// randomSeeds are the runs each test makes (the mutation check stops at
// the first that catches the forgotten field).
var randomSeeds = []uint64{7, 8, 9}

func TestRandomChangesConverge(t *testing.T) {
	for name, cfg := range randomConfigs() {
		t.Run(name, func(t *testing.T) {
			alone := map[string]int{}
			for _, seed := range randomSeeds {
				r := runRandom(t, name, cfg, seed, "")
				if r.failure != "" {
					t.Fatalf("seed %d: %s", seed, r.failure)
				}
				for f, n := range r.alone {
					alone[f] += n
				}
			}
			// Every field must have been the only change of some step,
			// so that a plan forgetting it would be caught (see
			// TestRandomChangesCatchAForgottenField).
			for _, f := range modelFields() {
				if alone[f] == 0 {
					t.Errorf("no step changed %s alone", f)
				}
			}
			t.Logf("steps that changed one field alone: %v", alone)
		})
	}
}

// fieldsNotRendered are the model fields that do not reach iptables rules
// at all, or only through the endpoints the model selects with them (so a
// plan need not look at them): forgetting one must not break the tables.
var fieldsNotRendered = map[string]string{
	"ServicePort.HealthCheckNodePort": "served by pkg/healthcheck, not by rules",
	"ServicePort.TrafficDistribution": "the model's endpoint selection reads the hints, not this field",
	"Endpoint.Zone":                   "only the node's zone and the endpoints' hints select endpoints",
	"Node.Ready":                      "reported by /healthz",
	"Node.Retiring":                   "reported by /healthz",
	"Node.Zone":                       "reaches the rules only through ClusterEndpoints, which the Builder rebuilds on a node change",
}

// TestRandomChangesCatchAForgottenField is the mutation check of the
// property test: for each field of the model, the run hands the Proxier
// the previous service port (or node, or ServiceCIDRs) whenever that field
// was the only change — what a plan that forgot the field would do — and
// the comparison with a full write must fail. A field the rules do not
// depend on must not make it fail.
func TestRandomChangesCatchAForgottenField(t *testing.T) {
	const cfgName = "NodePorts on the primary address and loopback"
	cfg := randomConfigs()[cfgName]
	for _, f := range modelFields() {
		t.Run(f, func(t *testing.T) {
			_, unrendered := fieldsNotRendered[f]
			forgotten := 0
			seeds := randomSeeds
			if unrendered {
				seeds = seeds[:1]
			}
			for _, seed := range seeds {
				r := runRandom(t, cfgName, cfg, seed, f)
				forgotten += r.forgotten
				switch {
				case unrendered && r.failure != "":
					t.Fatalf("forgetting %s (%s) broke the tables: %s", f, fieldsNotRendered[f], r.failure)
				case !unrendered && r.failure != "":
					t.Logf("seed %d caught it after %d forgotten changes: %.200s", seed, r.forgotten, r.failure)
					return
				}
			}
			switch {
			case forgotten == 0:
				t.Errorf("no run changed %s alone", f)
			case !unrendered:
				t.Errorf("forgetting %s %d times went unnoticed", f, forgotten)
			}
		})
	}
}

// modelFields lists, by reflection, the fields of the model a rendering can
// depend on: the service port's inputs (its derived endpoint selections
// aside), each endpoint's, the node's and the State's ServiceCIDRs. A
// field added to the model appears here and must be covered.
func modelFields() []string {
	var out []string
	for _, typ := range []reflect.Type{reflect.TypeFor[model.ServicePort](), reflect.TypeFor[model.Endpoint](), reflect.TypeFor[model.Node]()} {
		for f := range typ.Fields() {
			switch f.Name {
			case "Key", "Endpoints", "ClusterEndpoints", "ExternalEndpoints":
				continue
			}
			out = append(out, typ.Name()+"."+f.Name)
		}
	}
	return append(out, "Endpoints (which there are)", "State.ServiceCIDRs")
}

// portDiff names the fields in which b differs from a.
func portDiff(a, b *model.ServicePort) []string {
	var out []string
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for f := range va.Type().Fields() {
		i := f.Index[0]
		switch f.Name {
		case "Key", "ClusterEndpoints", "ExternalEndpoints":
			continue
		case "Endpoints":
			if len(a.Endpoints) != len(b.Endpoints) {
				out = append(out, "Endpoints (which there are)")
				continue
			}
			for j := range a.Endpoints {
				out = append(out, structDiff("Endpoint", a.Endpoints[j], b.Endpoints[j])...)
			}
			continue
		}
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, "ServicePort."+f.Name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// structDiff names the fields in which b differs from a, as "prefix.Field".
func structDiff[T any](prefix string, a, b T) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for f := range va.Type().Fields() {
		i := f.Index[0]
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, prefix+"."+f.Name)
		}
	}
	return out
}

// randomResult is what one run saw.
type randomResult struct {
	failure   string         // the first divergence, or ""
	alone     map[string]int // steps in which a field was the only change of a port, node or State
	forgotten int            // changes the run hid from the Proxier
}

// fullWrites caches the tables a fresh full write of each step's State
// gives, by configuration, seed and step: runs with the same seed build
// the same States, and the mutation check makes one run per field.
var fullWrites = map[string][2]string{}

// runRandom drives a Proxier through randomSteps random changes (seeded
// by seed) and checks it after each; with forget set, changes of that
// field alone are hidden from the Proxier.
func runRandom(t *testing.T, cfgName string, cfg proxier.Config, seed uint64, forget string) randomResult {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 11))
	g := newSnapGen(rng)
	var b model.Builder
	res := randomResult{alone: map[string]int{}}
	tp := newTestProxier(t, cfg)
	prev := b.Build(g.snap)
	seen := prev // what the Proxier was given last
	if err := tp.Sync(context.Background(), seen, model.Diff{}); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	for i := range randomSteps {
		what := g.mutate()
		s := b.Build(g.snap)
		given := &model.State{Node: s.Node, ServiceCIDRs: s.ServiceCIDRs, Services: maps.Clone(s.Services)}
		if d := structDiff("Node", prev.Node, s.Node); len(d) == 1 {
			res.alone[d[0]]++
			if d[0] == forget {
				given.Node = seen.Node
				res.forgotten++
			}
		}
		if !slices.Equal(prev.ServiceCIDRs, s.ServiceCIDRs) {
			res.alone["State.ServiceCIDRs"]++
			if forget == "State.ServiceCIDRs" {
				given.ServiceCIDRs = seen.ServiceCIDRs
				res.forgotten++
			}
		}
		for k, sp := range s.Services {
			old, ok := prev.Services[k]
			if !ok {
				continue
			}
			if d := portDiff(old, sp); len(d) == 1 {
				res.alone[d[0]]++
				if d[0] == forget {
					given.Services[k] = seen.Services[k]
					res.forgotten++
				}
			}
		}
		if err := tp.Sync(context.Background(), given, model.Diff{}); err != nil {
			res.failure = fmt.Sprintf("step %d (%s): Sync: %v", i, what, err)
			return res
		}
		if st := tp.LastSyncStats(); st.Full {
			res.failure = fmt.Sprintf("step %d (%s): the sync was full", i, what)
			return res
		}
		key := fmt.Sprintf("%s/%d/%d", cfgName, seed, i)
		want, ok := fullWrites[key]
		if !ok {
			want = fullWrite(t, cfg, s)
			fullWrites[key] = want
		}
		if msg := tp.mismatch(want); msg != "" {
			res.failure = fmt.Sprintf("step %d (%s): %s", i, what, msg)
			return res
		}
		prev, seen = s, given
	}
	return res
}

// fullWrite is the IPv4 and IPv6 tables a fresh full write of s gives.
func fullWrite(t *testing.T, cfg proxier.Config, s *model.State) [2]string {
	t.Helper()
	fresh := newTestProxier(t, cfg)
	fresh.sync(t, s)
	return [2]string{fresh.kernels[model.IPv4].canonical(), fresh.kernels[model.IPv6].canonical()}
}

// mismatch says how tp's kernels differ from want (a full write's IPv4
// and IPv6 tables), and whether the last sync's counts disagree with
// them; "" when they agree.
func (tp *testProxier) mismatch(want [2]string) string {
	for i, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
		if got, want := tp.kernels[fam].canonical(), want[i]; got != want {
			return fmt.Sprintf("%v tables differ from a full write:\n%s", fam, lineDiff(got, want))
		}
	}
	return tp.statsMismatch()
}

// lineDiff lists the lines only in got (+) and only in want (-).
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	return b.String()
}
