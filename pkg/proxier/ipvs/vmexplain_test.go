//go:build ipvsvm

package ipvs_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netns"

	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/explain"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/ipvs"
)

// vmPod is a Pod of the VM: a namespace on a veth of its own, answering
// on 8080 with its name and the source address it sees.
type vmPod struct {
	name string
	ns   netns.NsHandle
	ep   netip.AddrPort
}

func vmPods(t *testing.T) []vmPod {
	t.Helper()
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	var pods []vmPod
	for i, link := range []string{"vp", "vq", "vr"} {
		ip := netip.AddrFrom4([4]byte{10, 244, byte(i + 1), byte(11 + i)})
		ns := ipvs.VMPeer(t, link, fmt.Sprintf("10.244.%d.1/24", i+1), ip.String()+"/24")
		p := vmPod{name: fmt.Sprintf("pod%d", i+1), ns: ns, ep: netip.AddrPortFrom(ip, 8080)}
		var ln net.Listener
		var err error
		ipvs.VMInNS(ns, func() { ln, err = net.Listen("tcp", p.ep.String()) })
		if err != nil {
			t.Fatal(err)
		}
		ipvs.VMServe(t, ln, func(c net.Conn) { fmt.Fprintf(c, "%s %s\n", p.name, c.RemoteAddr()) })
		pods = append(pods, p)
	}
	return pods
}

// askPod connects from ns to addr and returns the Pod's name and the
// source address it saw.
func askPod(t *testing.T, ns netns.NsHandle, addr string) (string, netip.Addr) {
	t.Helper()
	var line string
	var err error
	ipvs.VMInNS(ns, func() {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, 3*time.Second); err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	name, peer, _ := strings.Cut(strings.TrimSpace(line), " ")
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		t.Fatalf("answer %q: %v", line, err)
	}
	return name, ap.Addr().Unmap()
}

// proxyd explain against the real ip_vs kernel: the virtual server's real
// servers and shares against where 300 real connections went, the
// masquerade verdict against the source the Pods see, a real client's
// persistence template, and drift after a real server is deleted by hand.
func TestVMExplain(t *testing.T) {
	pods := vmPods(t)
	cl := ipvs.VMClient(t)
	const vip, stickyVIP = "10.96.0.60", "10.96.0.61"
	svc := func(name, vip string, affinity int32) *model.ServicePort {
		s := &model.ServicePort{Key: model.ServicePortKey{Namespace: "default", Name: name, Port: "tcp", Protocol: model.TCP},
			ClusterIPs: []netip.Addr{netip.MustParseAddr(vip)}, Port: 80, AffinitySeconds: affinity}
		for _, p := range pods {
			ep := model.Endpoint{IP: p.ep.Addr(), Port: p.ep.Port(), Ready: true, Serving: true}
			s.Endpoints, s.ClusterEndpoints = append(s.Endpoints, ep), append(s.ClusterEndpoints, ep)
		}
		return s
	}
	s := &model.State{Node: model.Node{Name: flowspec.NodeName, IPs: []netip.Addr{netip.MustParseAddr("192.168.99.1")}},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}, Services: map[model.ServicePortKey]*model.ServicePort{}}
	for _, sp := range []*model.ServicePort{svc("explained", vip, 0), svc("explained-sticky", stickyVIP, 10800)} {
		s.Services[sp.Key] = sp
	}
	p, err := ipvs.New(flowspec.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Cleanup(context.Background()) })
	if err := p.Sync(context.Background(), s, model.Compute(nil, s)); err != nil {
		t.Fatal(err)
	}
	x := &explain.Explainer{Dataplane: &explain.IPVS{Config: p.Config(), Scheduler: p.Scheduler()}, State: func() *model.State { return s }, ReadBy: "test"}
	if r, err := conntrack.NewReader(0); err != nil {
		t.Logf("no conntrack entries in the report: %v", err)
	} else {
		defer r.Close()
		x.Conntrack = r
	}
	const client = "192.168.99.2"
	explainText := func(t *testing.T, to string) *explain.Report {
		t.Helper()
		q, err := explain.ParseQuery(client, to, "tcp", "auto", explain.InterfaceAddrs())
		if err != nil {
			t.Fatal(err)
		}
		r, err := x.Explain(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		_ = r.WriteText(&b)
		t.Logf("proxyd explain --from %s --to %s:\n%s", client, to, b.String())
		return r
	}
	podOf := func(ep netip.AddrPort) string {
		for _, p := range pods {
			if p.ep == ep {
				return p.name
			}
		}
		return ep.String()
	}
	addr := vip + ":80"

	t.Run("the predicted real servers and shares are where 300 connections went, and the masquerade verdict what the Pods see", func(t *testing.T) {
		r := explainText(t, addr)
		if r.Verdict != "dnat" || len(r.Outcomes) != 3 || r.Scheduler == nil || r.Scheduler.Name != "rr" || !r.Drift.Known || len(r.Drift.Differences) != 0 {
			t.Fatalf("verdict %s, outcomes %+v, scheduler %+v, drift %+v", r.Verdict, r.Outcomes, r.Scheduler, r.Drift)
		}
		counts := map[string]int{}
		for range 300 {
			name, src := askPod(t, cl, addr)
			counts[name]++
			if masq := src != netip.MustParseAddr(client); masq != (r.Masquerade.Decision == "yes") {
				t.Fatalf("explain says masquerade %q, the Pod saw %v", r.Masquerade.Decision, src)
			}
		}
		var seen []int
		var probs []float64
		for _, o := range r.Outcomes {
			seen = append(seen, counts[podOf(o.Endpoint)])
			probs = append(probs, o.Probability)
			delete(counts, podOf(o.Endpoint))
		}
		if len(counts) > 0 {
			t.Fatalf("connections went where explain did not predict: %v", counts)
		}
		pv := flowspec.ChiSquareP(seen, probs)
		t.Logf("predicted %v, seen %v: chi-square p=%.3f", probs, seen, pv)
		if pv < 0.01 {
			t.Errorf("the prediction does not fit (p=%.4f)", pv)
		}
	})

	t.Run("a real client's persistence template is named and followed", func(t *testing.T) {
		sticky := stickyVIP + ":80"
		name, _ := askPod(t, cl, sticky)
		r := explainText(t, sticky)
		if len(r.Affinity) != 1 || podOf(r.Affinity[0].Endpoint) != name || !r.Affinity[0].Active || r.Affinity[0].Expires <= 0 {
			conns, err := os.ReadFile(ipvs.ConnTable)
			t.Fatalf("affinity %+v, want the template to %s; %s (%v):\n%s", r.Affinity, name, ipvs.ConnTable, err, conns)
		}
		if len(r.Outcomes) != 1 || podOf(r.Outcomes[0].Endpoint) != name || r.Outcomes[0].Probability != 1 {
			t.Errorf("outcomes %+v, want %s for certain", r.Outcomes, name)
		}
		for range 5 {
			if again, _ := askPod(t, cl, sticky); again != name {
				t.Errorf("the kernel sent the client to %s, not to its template's %s", again, name)
			}
		}
	})

	t.Run("a real server deleted by hand is drift, and the trace follows the kernel", func(t *testing.T) {
		h, err := mobyipvs.New("")
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		vs := &mobyipvs.Service{AddressFamily: 2, Protocol: 6, Address: net.ParseIP(vip).To4(), Port: 80, SchedName: "rr", Netmask: 0xffffffff}
		gone := pods[1].ep
		if err := h.DelDestination(vs, &mobyipvs.Destination{Address: gone.Addr().AsSlice(), Port: gone.Port()}); err != nil {
			t.Fatal(err)
		}
		r := explainText(t, addr)
		want := fmt.Sprintf("real server %s of TCP %s is missing", gone, addr)
		if !r.Drift.Known || len(r.Drift.Differences) != 1 || r.Drift.Differences[0] != want {
			t.Errorf("drift %q, want %q", r.Drift.Differences, want)
		}
		if len(r.Outcomes) != 2 {
			t.Errorf("outcomes %+v, want the two real servers the kernel still has", r.Outcomes)
		}
		for range 20 {
			if name, _ := askPod(t, cl, addr); name == pods[1].name {
				t.Fatalf("a connection reached %s after its real server was deleted", name)
			}
		}
	})
}
