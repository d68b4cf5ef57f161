package convert

import (
	"fmt"
	"testing"

	discovery "k8s.io/api/discovery/v1"

	"github.com/proxyd/proxyd/pkg/informer/convert/converttest"
)

// BenchmarkEndpointSlice is the informer's part of one endpoint change:
// converting the changed slice of 10 endpoints as its watch event arrives.
func BenchmarkEndpointSlice(b *testing.B) {
	es := converttest.Slice(func(es *discovery.EndpointSlice) {
		ep := es.Endpoints[0]
		es.Endpoints = nil
		for i := range 10 {
			e := ep
			e.Addresses = []string{fmt.Sprintf("10.1.0.%d", i+1)}
			es.Endpoints = append(es.Endpoints, e)
		}
	})
	b.ReportAllocs()
	for b.Loop() {
		if m, ds := EndpointSlice(es, ""); m == nil || len(m.Endpoints) != 10 || len(ds) != 0 {
			b.Fatalf("converted to %+v, dropped %v", m, ds)
		}
	}
}
