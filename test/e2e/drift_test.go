//go:build e2e

package e2e

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// driftPeriod is proxyd's sync period in the drift tests: a repair must
// come within one period (checked with a margin for the client's retries).
const driftPeriod = 2 * time.Second

// Someone else changes proxyd's nftables table — as a firewall manager or
// an admin with nft could — and traffic to the ClusterIP is whole again
// within one sync period, with the repair counted.
func TestNFTablesDriftIsRepairedWithinASyncPeriod(t *testing.T) {
	e := needEnv(t)
	const vip = "10.96.0.90"
	addr := vip + ":80"
	pods := e.lab.Pods[:3]
	all := []endpoint{{pods[0], true}, {pods[1], true}, {pods[2], true}}
	e.createService(t, "drift", vip, nil, svcPort{"tcp", v1.ProtocolTCP, 80})
	e.createSlice(t, e.slice("drift-1", "drift", all, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	e.startProxyd(t, "nftables", "--sync-period", driftPeriod.String())
	e.waitAnswers(t, "the VIP answers", addr, 1)

	cases := []struct {
		name   string
		tamper func(t *testing.T) []string
	}{
		{"the table deleted", func(*testing.T) []string { return []string{"delete", "table", "ip", "proxyd"} }},
		{"the chain the VIP goes to flushed", func(t *testing.T) []string {
			return []string{"flush", "chain", "ip", "proxyd", e.dispatchChain(t, vip)}
		}},
		{"the VIP's dispatch element deleted", func(*testing.T) []string {
			return []string{"delete", "element", "ip", "proxyd", "service-ips", "{ " + vip + " . tcp . 80 }"}
		}},
		{"one endpoint's element deleted from the endpoint map", func(*testing.T) []string {
			return []string{"delete", "element", "ip", "proxyd", "endpoints-tcp", "{ " + vip + " . 80 . 1 }"}
		}},
		{"a foreign rule inserted that drops the VIP", func(*testing.T) []string {
			return []string{"insert", "rule", "ip", "proxyd", "nat-prerouting", "ip", "daddr", vip, "drop"}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := driftRepairs(t, e.metrics(t))
			e.nft(t, c.tamper(t)...)
			start := time.Now()
			broken := e.traffic(t, e.lab.ClientNS, "tcp", addr, 30, 1)
			e.eventually(t, driftPeriod+3*time.Second, "all three Pods answer every connection again", func() error {
				r := e.traffic(t, e.lab.ClientNS, "tcp", addr, 30, 1)
				if r.Answered() != 30 || len(r.Counts) != 3 {
					return errorf("%d of 30 answered, by %v: %+v", r.Answered(), r.Counts, r.Errors)
				}
				return nil
			})
			whole := time.Since(start)
			if c := e.dispatchChain(t, vip); c != "pick-tcp-3" {
				t.Errorf("after the repair service-ips sends the VIP to %s, want pick-tcp-3", c)
			}
			if after := driftRepairs(t, e.metrics(t)); after <= before {
				t.Errorf("proxyd_drift_repairs_total{mode=\"nftables\"} %v, then %v: the repair was not counted", before, after)
			}
			t.Logf("right after: %d of 30 answered (%v); whole again %v after the change", broken.Answered(), broken.Counts, whole.Round(10*time.Millisecond))
		})
	}
}

var serviceIPsElement = regexp.MustCompile(`(?m)(\S+) \. tcp \. 80(?: comment "[^"]*")? : goto (\S+)`)

// dispatchChain is the chain service-ips sends vip's TCP port 80 to.
func (e *env) dispatchChain(t *testing.T, vip string) string {
	t.Helper()
	out, err := e.lab.Exec(context.Background(), e.lab.NodeNS, "nft", "list", "map", "ip", "proxyd", "service-ips")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range serviceIPsElement.FindAllStringSubmatch(out, -1) {
		if strings.TrimPrefix(m[1], "{ ") == vip {
			return strings.TrimRight(m[2], ",}")
		}
	}
	t.Fatalf("no element for %s in\n%s", vip, out)
	return ""
}

var driftRepairsLine = regexp.MustCompile(`(?m)^proxyd_drift_repairs_total\{mode="nftables"\} (\S+)$`)

func driftRepairs(t *testing.T, body string) float64 {
	m := driftRepairsLine.FindStringSubmatch(body)
	if m == nil {
		return 0 // not counted yet
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
