//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// driftSyncPeriod is the --sync-period of the drift tests: a repair must
// come within one.
const driftSyncPeriod = 5 * time.Second

// TestIPTablesDriftIsRepairedWithinASyncPeriod changes proxyd's iptables
// rules behind its back, in each way issue 11 lists, in both variants,
// each case with a proxyd of its own: traffic to the Service breaks, and
// works again within one sync period without any change to the Service,
// and proxyd counts the repair. While nothing drifts, proxyd writes
// nothing.
func TestIPTablesDriftIsRepairedWithinASyncPeriod(t *testing.T) {
	e := needEnv(t)
	const vip, addr = "10.96.0.72", "10.96.0.72:80"
	pods := e.lab.Pods[:2]
	e.createService(t, "ipt-drift", vip, nil, svcPort{"tcp", v1.ProtocolTCP, 80})
	e.createSlice(t, e.slice("ipt-drift-1", "ipt-drift", []endpoint{{pods[0], true}, {pods[1], true}}, svcPort{"tcp", v1.ProtocolTCP, 8080}))
	for _, dp := range dataplanes[1:] {
		t.Run(dp.name, func(t *testing.T) {
			bin, bin6 := "iptables-nft", "ip6tables-nft"
			if slices.Contains(dp.args, "--iptables-backend=legacy") {
				bin, bin6 = "iptables-legacy", "ip6tables-legacy"
			}
			start := func(t *testing.T) {
				t.Helper()
				e.startDataplane(t, dataplane{mode: dp.mode, args: append(slices.Clone(dp.args),
					"--sync-period", driftSyncPeriod.String(), "--min-sync-period", "1s")})
				e.waitAnswers(t, "the VIP answers", addr, 4)
			}
			run := func(t *testing.T, argv ...string) {
				t.Helper()
				if out, err := e.lab.Exec(context.Background(), e.lab.NodeNS, argv...); err != nil {
					t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
				}
			}
			for _, c := range []struct {
				name  string
				drift func(t *testing.T)
			}{
				{"a firewall reload (every chain of nat, filter and mangle flushed and deleted)", func(t *testing.T) {
					for _, b := range []string{bin, bin6} {
						for _, table := range []string{"nat", "filter", "mangle"} {
							run(t, b, "-t", table, "-F")
							run(t, b, "-t", table, "-X")
						}
					}
				}},
				{"the nat and filter tables deleted (iptables-nft: nft delete table; legacy: every chain flushed and deleted)", func(t *testing.T) {
					for _, fam := range []string{"ip", "ip6"} {
						for _, table := range []string{"nat", "filter"} {
							if bin == "iptables-nft" {
								run(t, "nft", "delete", "table", fam, table)
								continue
							}
							b := bin
							if fam == "ip6" {
								b = bin6
							}
							run(t, b, "-t", table, "-F")
							run(t, b, "-t", table, "-X")
						}
					}
				}},
				{"the Service's chain flushed", func(t *testing.T) {
					run(t, bin, "-t", "nat", "-F", e.serviceChain(t, bin, "default/ipt-drift:tcp cluster IP"))
				}},
				{"a rule inserted by someone else into PROXYD-SERVICES", func(t *testing.T) {
					run(t, bin, "-t", "nat", "-I", "PROXYD-SERVICES", "1", "-d", vip+"/32", "-p", "tcp", "--dport", "80", "-j", "RETURN")
				}},
				{"the jumps from the built-in chains removed", func(t *testing.T) {
					for _, spec := range [][]string{
						{"-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "proxyd service portals", "-j", "PROXYD-SERVICES"},
						{"-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment", "proxyd service portals", "-j", "PROXYD-SERVICES"},
					} {
						run(t, append([]string{bin}, spec...)...)
					}
				}},
			} {
				t.Run(c.name, func(t *testing.T) {
					start(t)
					repairs := iptablesDriftRepairs(e.metrics(t))
					e.justAfterASync(t)
					c.drift(t)
					drifted := time.Now()
					if r := e.probe(addr); r.Answered() != 0 {
						t.Fatalf("the drift did not break the Service: %+v", r)
					}
					var repaired time.Duration
					e.eventually(t, driftSyncPeriod+5*time.Second, "traffic works again", func() error {
						probed := time.Now()
						if r := e.probe(addr); r.Answered() != 2 {
							return fmt.Errorf("%d of 2 answered: %+v", r.Answered(), r.Errors)
						}
						repaired = probed.Sub(drifted)
						return nil
					})
					t.Logf("traffic worked again %v after the drift (sync period %v)", repaired.Round(10*time.Millisecond), driftSyncPeriod)
					if repaired > driftSyncPeriod+time.Second {
						t.Errorf("repaired after %v, want within one sync period (%v) and a second", repaired, driftSyncPeriod)
					}
					// One repair per family that drifted (a reload hits both).
					e.eventually(t, 5*time.Second, "the repair is counted", func() error {
						if got := iptablesDriftRepairs(e.metrics(t)); got <= repairs {
							return fmt.Errorf("proxyd_drift_repairs_total{mode=iptables} still %v", got)
						}
						return nil
					})
				})
			}
			t.Run("without drift, sync periods write nothing", func(t *testing.T) {
				start(t)
				e.justAfterASync(t)
				before := e.metrics(t)
				time.Sleep(2*driftSyncPeriod + time.Second)
				after := e.metrics(t)
				if n := syncs(after) - syncs(before); n < 2 {
					t.Fatalf("%d syncs in two sync periods", n)
				}
				if a, b := kernelObjects(before), kernelObjects(after); a != b {
					t.Errorf("proxyd_kernel_objects_written_total went from %v to %v without any change", a, b)
				}
			})
		})
	}
}

// probe opens two connections to addr with a short timeout.
func (e *env) probe(addr string) lab.ClientResult {
	r, _ := e.lab.TrafficWith(context.Background(), e.lab.ClientNS, lab.TrafficOptions{Proto: "tcp", Addr: addr, Count: 2, Timeout: 300 * time.Millisecond})
	return r
}

// justAfterASync waits until proxyd has just synced, so that a drift made
// now stands until the next periodic sync.
func (e *env) justAfterASync(t *testing.T) {
	t.Helper()
	n := syncs(e.metrics(t))
	e.eventually(t, driftSyncPeriod+5*time.Second, "a periodic sync", func() error {
		if syncs(e.metrics(t)) == n {
			return fmt.Errorf("still %d syncs", n)
		}
		return nil
	})
}

// serviceChain finds the chain nat's PROXYD-SERVICES sends the rule with
// comment to.
func (e *env) serviceChain(t *testing.T, bin, comment string) string {
	t.Helper()
	out, err := e.lab.Exec(context.Background(), e.lab.NodeNS, bin+"-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "-A PROXYD-SERVICES ") && strings.Contains(line, `"`+comment+`"`) {
			f := strings.Fields(line)
			return f[len(f)-1]
		}
	}
	t.Fatalf("no rule %q in:\n%s", comment, out)
	return ""
}

var (
	iptablesDriftRepairsRE = regexp.MustCompile(`(?m)^proxyd_drift_repairs_total\{mode="iptables"\} (\S+)`)
	kernelObjectsRE        = regexp.MustCompile(`(?m)^proxyd_kernel_objects_written_total (\S+)`)
)

func iptablesDriftRepairs(body string) float64 { return metricValue(iptablesDriftRepairsRE, body) }

func kernelObjects(body string) float64 { return metricValue(kernelObjectsRE, body) }

func metricValue(re *regexp.Regexp, body string) float64 {
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
