//go:build e2e

package e2e

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// A Service with a field proxyd cannot program (here an IPv6 external IP on
// an IPv4-only Service, which the API accepts) keeps its other parts, and
// proxyd says what it left out in a Warning Event on the Service.
func TestAFieldProxydLeavesOutIsReportedOnTheService(t *testing.T) {
	e := needEnv(t)
	pods := e.lab.Pods[:1]
	e.startDataplane(t, dataplanes[0])
	e.createServiceWith(t, "bad-field", "10.96.0.95", nil, func(s *v1.Service) {
		s.Spec.ExternalIPs = []string{"2001:db8::95"}
	}, svcPort{"tcp", v1.ProtocolTCP, 80})
	e.createSlice(t, e.slice("bad-field-1", "bad-field", []endpoint{{pods[0], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	e.waitAnswers(t, "the ClusterIP of a Service with an unusable external IP answers", "10.96.0.95:80", 1)
	e.eventually(t, 10*time.Second, "a Warning Event on default/bad-field", func() error {
		return e.warningEvent("bad-field", "IgnoredField", `spec.externalIPs[0] "2001:db8::95": the Service has no IPv6 cluster IP`)
	})
}
