package explain

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/ipvs"
)

// IPVS reads IPVS mode's dataplane back from the kernel — the IPVS table
// (github.com/moby/ipvs), the inet proxyd-ipvs nftables table (pkg/nft's
// Reader) and IPVS's persistence templates (/proc/net/ip_vs_conn) — and
// traces it as the IPVS backend's tracer does: the nftables chains by
// hook and priority, IPVS as a pseudo-chain where it schedules.
type IPVS struct {
	// Config and Scheduler are what proxyd renders with; drift needs them.
	Config    proxier.Config
	Scheduler string
	// Local reports whether an address is the node's (default: the
	// addresses of this network namespace's interfaces, the VIPs on
	// proxyd-ipvs0 among them).
	Local func(netip.Addr) bool
	// Open opens the kernel (default: ipvs.OpenKernel of this network
	// namespace); tests give fakes.
	Open func() (*ipvs.Kernel, error)
}

// Name implements Dataplane.
func (d *IPVS) Name() string { return "ipvs" }

func (d *IPVS) open() (*ipvs.Kernel, error) {
	if d.Open != nil {
		return d.Open()
	}
	return ipvs.OpenKernel("")
}

// hashSchedulers choose by a hash rather than by turn or load.
var hashSchedulers = map[string]string{
	"sh": "source hashing: the kernel hashes the client's address to one real server, the same for all its connections while the real servers stay",
	"dh": "destination hashing: the kernel hashes the virtual server's address to one real server, the same for every client",
	"mh": "maglev hashing: the kernel hashes the client's address and port to one real server through its lookup table",
}

// schedulerDoes says what a scheduler does with a new connection.
var schedulerDoes = map[string]string{
	"rr":  "round robin: each new connection goes to the next real server in turn, so over many connections each gets an equal share",
	"wrr": "weighted round robin: real servers take new connections in turn, each as often as its weight says",
	"lc":  "least connection: a new connection goes to the real server with the fewest connections; on equal counts they share alike",
	"wlc": "weighted least connection: a new connection goes to the real server with the fewest connections for its weight",
	"sed": "shortest expected delay: a new connection goes to the real server with the fewest connections for its weight, counting itself",
	"nq":  "never queue: an idle real server first, else as shortest expected delay",
}

// Trace implements Dataplane.
func (d *IPVS) Trace(ctx context.Context, q Query) (*Trace, error) {
	k, err := d.open()
	if err != nil {
		return nil, err
	}
	defer k.Close()
	ks, err := k.Read(nil)
	if err != nil {
		return nil, err
	}
	out := &Trace{}
	if ks.NFT == nil {
		out.Notes = append(out.Notes, fmt.Sprintf("the kernel has no table inet %s: only IPVS itself sees this packet", ipvs.TableName))
	}
	templates, err := ipvs.ReadTemplates(k.Conns)
	if err != nil {
		out.Notes = append(out.Notes, "persistence templates unknown (the trace assumes none): "+err.Error())
	}
	local := d.Local
	if local == nil {
		local = InterfaceAddrs()
	}
	// A hashing scheduler's choice is the kernel's hash of an address;
	// enumerate what it can choose instead, by weight (its share over
	// many clients), and say so.
	traced := &ipvs.Table{Servers: map[ipvs.VSKey]*ipvs.VirtualServer{}}
	for key, vs := range ks.Table.Servers {
		c := *vs
		if _, hashed := hashSchedulers[c.Scheduler]; hashed {
			c.Scheduler = "wrr"
		}
		traced.Servers[key] = &c
	}
	outs, outcomes, err := nftOutcomes(ipvs.KernelTracer(traced, ks.NFT, local, templates).NFT(), q)
	if err != nil {
		return nil, err
	}
	out.Outcomes = outcomes
	out.NoMasqueradeWhy = nftNoMasqueradeWhy(outs, q.Src)
	vs := scheduledBy(outs, ks.Table)
	if vs == nil {
		out.MatchedBy = nftDecidedBy(outs)
		return out, nil
	}
	out.MatchedBy = &Step{Table: "ipvs", Chain: "virtual server", Rule: virtualServerLine(vs)}
	out.Scheduler = schedulerOf(vs)
	for _, tp := range templates {
		if tp.VS != vs.VSKey || tp.Client != q.Src {
			continue
		}
		a := Affinity{Client: q.Src, Endpoint: tp.RealServer, Where: fmt.Sprintf("IPVS persistence template of %s (/proc/net/ip_vs_conn, %s)", vs.VSKey, tp.State),
			Timeout: time.Duration(vs.Timeout) * time.Second, Expires: tp.Expires}
		for _, rs := range vs.RealServers {
			a.Active = a.Active || (rs.Addr == tp.RealServer && rs.Weight > 0)
		}
		out.Affinity = append(out.Affinity, a)
	}
	return out, nil
}

// scheduledBy finds the virtual server IPVS scheduled (or refused) the
// packet with, from the notes its pseudo-chain left on the paths.
func scheduledBy(outs []nft.Outcome, t *ipvs.Table) *ipvs.VirtualServer {
	for _, o := range outs {
		for _, s := range o.Path {
			if s.Table != nil {
				continue
			}
			text := s.Text()
			for _, vs := range t.Sorted() {
				if strings.HasPrefix(text, vs.VSKey.String()+" ") {
					return vs
				}
			}
		}
	}
	return nil
}

func virtualServerLine(vs *ipvs.VirtualServer) string {
	line := fmt.Sprintf("%s %s", vs.VSKey, vs.Scheduler)
	if vs.Persistent() {
		line += fmt.Sprintf(" persistent %d", vs.Timeout)
	}
	for _, rs := range vs.RealServers {
		line += fmt.Sprintf(" -> %s weight %d", rs.Addr, rs.Weight)
	}
	return line
}

func schedulerOf(vs *ipvs.VirtualServer) *Scheduler {
	sc := &Scheduler{VirtualServer: vs.VSKey.String(), Name: vs.Scheduler, Weights: map[string]int{},
		Persistence: time.Duration(vs.Timeout) * time.Second}
	for _, rs := range vs.RealServers {
		sc.Weights[rs.Addr.String()] = rs.Weight
	}
	switch does, hashed := hashSchedulers[vs.Scheduler]; {
	case hashed:
		sc.Does = does + "; the outcomes are each real server's share by weight over many clients, not this client's odds (explain does not compute the kernel's hash)"
	case schedulerDoes[vs.Scheduler] != "":
		sc.Does = schedulerDoes[vs.Scheduler] + "; the outcomes are each real server's share of new connections on an idle table, not a random draw"
	default:
		sc.Does = "a scheduler explain does not know; the outcomes assume a share by weight"
	}
	if vs.Persistent() {
		sc.Does += fmt.Sprintf("; persistent: a client's later connections within %d s go where its first went", vs.Timeout)
	}
	return sc
}

// Drift implements Dataplane: the virtual and real servers, the addresses
// of proxyd-ipvs0 and the proxyd-ipvs table against what proxyd renders
// for s.
func (d *IPVS) Drift(ctx context.Context, s *model.State) ([]string, error) {
	k, err := d.open()
	if err != nil {
		return nil, err
	}
	defer k.Close()
	ks, err := k.Read(s.Node.IPs)
	if err != nil {
		return nil, err
	}
	sched, err := ipvs.ValidateScheduler(d.Scheduler)
	if err != nil {
		return nil, err
	}
	want := ipvs.RenderWith(s, sched, d.Config)
	return ipvs.Drift(ks, want, ipvs.RenderNetfilter(want, d.Config)), nil
}
