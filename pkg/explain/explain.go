package explain

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/balance"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/model"
)

// Dataplane is one mode's view of the kernel, as explain needs it.
type Dataplane interface {
	// Name is the dataplane as a user knows it, e.g. "iptables-nft".
	Name() string
	// Trace reads the mode's rules from the kernel now and enumerates
	// every way they treat q: outcomes whose probabilities add up to one,
	// each with the rules on its path, and the affinity entries the kernel
	// holds for q.Src that the trace followed.
	Trace(ctx context.Context, q Query) (*Trace, error)
	// Drift compares the rules the kernel holds with those proxyd would
	// program for s, and describes every difference (none: no drift).
	Drift(ctx context.Context, s *model.State) ([]string, error)
}

// Trace is what a Dataplane found.
type Trace struct {
	Outcomes []Outcome
	// Service and MatchedBy: the Service port the rules chose, and the
	// rule that chose it (nil when no rule claimed the packet). MatchedBy
	// without Service is a rule that claimed the destination without
	// naming a Service (an IPVS virtual server, a set of Service
	// addresses without endpoints).
	Service   *ServiceRef
	MatchedBy *Step
	// NoMasqueradeWhy says, when no outcome is masqueraded, why not
	// (e.g. which rule would have, and what it requires).
	NoMasqueradeWhy string
	Affinity        []Affinity
	Scheduler       *Scheduler
	// Notes are what the reader could not read, or had to assume.
	Notes []string
}

// Explainer answers queries. Only Dataplane is required; in the daemon
// State, Balance and ReadBy "daemon" make the answer complete.
type Explainer struct {
	Dataplane Dataplane
	// Conntrack reads the conntrack table (nil: not shown).
	Conntrack *conntrack.Reader
	// State returns what proxyd last programmed (nil outside the daemon:
	// drift is then unknown).
	State func() *model.State
	// Balance is the connection-balance collector (nil outside the daemon).
	Balance *balance.Collector
	ReadBy  string
	Now     func() time.Time
}

// ErrNotFound is returned for a Service proxyd does not program.
var ErrNotFound = errors.New("no such Service")

// Explain answers q.
func (x *Explainer) Explain(ctx context.Context, q Query) (*Report, error) {
	if x.Dataplane == nil {
		return nil, errors.New("explain: this mode has no reader of its kernel state")
	}
	if !q.Src.IsValid() || !q.Dst.IsValid() {
		return nil, errors.New("explain: need a source address and a destination address:port")
	}
	q.Src, q.Dst = q.Src.Unmap(), netip.AddrPortFrom(q.Dst.Addr().Unmap(), q.Dst.Port())
	if q.Src.Is4() != q.Dst.Addr().Is4() {
		return nil, fmt.Errorf("explain: %v and %v are of different families", q.Src, q.Dst.Addr())
	}
	if !q.Proto.Valid() {
		return nil, fmt.Errorf("explain: protocol %q: want TCP, UDP or SCTP", q.Proto)
	}
	now := time.Now
	if x.Now != nil {
		now = x.Now
	}
	r := &Report{Query: q, Dataplane: x.Dataplane.Name(), ReadBy: x.ReadBy, At: now().UTC()}
	tr, err := x.Dataplane.Trace(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("explain: read the %s rules: %w", r.Dataplane, err)
	}
	r.Outcomes, r.Service, r.MatchedBy, r.Affinity, r.Scheduler = tr.Outcomes, tr.Service, tr.MatchedBy, tr.Affinity, tr.Scheduler
	r.Notes = append(r.Notes, tr.Notes...)
	if r.Affinity == nil {
		r.Affinity = []Affinity{}
	}
	r.Verdict = verdictOf(r.Outcomes)
	r.Masquerade = masqueradeOf(r.Outcomes, tr.NoMasqueradeWhy)
	if err := x.conntrack(q, r); err != nil {
		r.Notes = append(r.Notes, "conntrack: "+err.Error())
	}
	x.drift(ctx, q, r)
	return r, nil
}

func verdictOf(out []Outcome) string {
	v := ""
	for _, o := range out {
		if v != "" && v != o.Verdict {
			return "mixed"
		}
		v = o.Verdict
	}
	return v
}

func masqueradeOf(out []Outcome, noWhy string) Masquerade {
	var m Masquerade
	yes, no := 0, 0
	for _, o := range out {
		if o.Verdict != "dnat" {
			continue
		}
		if o.Masquerade {
			yes++
			why := o.MasqueradeWhy
			if why == "" {
				why = "a rule on its path masquerades it"
			}
			if len(out) > 1 && strings.HasPrefix(why, "hairpin") {
				why = fmt.Sprintf("through %v: %s", o.Endpoint, why)
			}
			if !slices.Contains(m.Why, why) {
				m.Why = append(m.Why, why)
			}
		} else {
			no++
		}
	}
	switch {
	case yes == 0:
		m.Decision = "no"
		if noWhy != "" {
			m.Why = append(m.Why, noWhy)
		}
	case no == 0:
		m.Decision = "yes"
	default:
		m.Decision = "for some endpoints"
	}
	if m.Why == nil {
		m.Why = []string{}
	}
	return m
}

// conntrack lists the entries from the client to the destination.
func (x *Explainer) conntrack(q Query, r *Report) error {
	r.Conntrack = []Conn{}
	if x.Conntrack == nil {
		return errors.New("not read")
	}
	proto := protoNumber(q.Proto)
	return x.Conntrack.Dump(model.FamilyOf(q.Dst.Addr()), func(e *conntrack.Entry) {
		if e.Proto != proto || e.Orig.Src.Addr() != q.Src || e.Orig.Dst != q.Dst {
			return
		}
		if e.Proto == tcpProto && !e.Established() {
			r.ConntrackOther++
			return
		}
		r.Conntrack = append(r.Conntrack, Conn{Proto: strings.ToLower(string(q.Proto)), State: e.State(),
			Client: e.Orig.Src, Dst: e.Orig.Dst, Endpoint: e.Reply.Src, ReplyTo: e.Reply.Dst, Timeout: e.Timeout})
	})
}

// drift compares the kernel with what proxyd programmed, when known.
func (x *Explainer) drift(ctx context.Context, q Query, r *Report) {
	if x.State == nil {
		r.Drift = Drift{Why: "unknown: only the daemon knows what proxyd means to program (the CLI could not reach its /debug/explain)"}
		return
	}
	s := x.State()
	if s == nil {
		r.Drift = Drift{Why: "unknown: proxyd has not programmed anything yet"}
		return
	}
	d, err := x.Dataplane.Drift(ctx, s)
	if err != nil {
		r.Drift = Drift{Why: "unknown: " + err.Error()}
		return
	}
	r.Drift = Drift{Known: true, Differences: d}
	r.Model = owner(s, q)
	if r.Model != nil && r.Service != nil && r.Service.same(r.Model) {
		// The model knows an external IP from a load-balancer IP,
		// which rules sending both the same way need not.
		r.Service.Kind = r.Model.Kind
	}
	unnamed := r.Service == nil && r.MatchedBy != nil
	if r.Model != nil && !unnamed && (r.Service == nil || !r.Service.same(r.Model)) {
		r.Drift.Differences = append(r.Drift.Differences, fmt.Sprintf("proxyd programmed %v for %s %v, but the kernel's rules %s",
			r.Model, strings.ToLower(string(q.Proto)), q.Dst, claimed(r.Service)))
	}
}

// same reports whether s and o name the same Service port.
func (s *ServiceRef) same(o *ServiceRef) bool {
	return s.Namespace == o.Namespace && s.Name == o.Name && s.Port == o.Port && s.Protocol == o.Protocol
}

func claimed(s *ServiceRef) string {
	if s == nil {
		return "send it to no Service"
	}
	return "send it to " + s.String()
}

func (s *ServiceRef) String() string {
	out := s.Namespace + "/" + s.Name
	if s.Port != "" {
		out += " port " + s.Port
	}
	return out + " (" + string(s.Protocol) + ")"
}

// owner is the service port proxyd's State gives q's destination: a
// ClusterIP, external or load-balancer IP, or a NodePort on a node address.
func owner(s *model.State, q Query) *ServiceRef {
	for _, sp := range s.Sorted() {
		if sp.Key.Protocol != q.Proto {
			continue
		}
		ref := &ServiceRef{Namespace: sp.Key.Namespace, Name: sp.Key.Name, Port: sp.Key.Port, Protocol: sp.Key.Protocol}
		if sp.Port == q.Dst.Port() {
			switch {
			case slices.Contains(sp.ClusterIPs, q.Dst.Addr()):
				ref.Kind = "ClusterIP"
			case slices.Contains(sp.LoadBalancerIPs, q.Dst.Addr()):
				ref.Kind = "load-balancer IP"
			case slices.Contains(sp.ExternalIPs, q.Dst.Addr()):
				ref.Kind = "external IP"
			}
		}
		if ref.Kind == "" && sp.NodePort != 0 && sp.NodePort == q.Dst.Port() && slices.Contains(s.Node.IPs, q.Dst.Addr()) {
			ref.Kind = "NodePort"
		}
		if ref.Kind != "" {
			return ref
		}
	}
	return nil
}

const tcpProto = 6

func protoNumber(p model.Protocol) uint8 {
	switch p {
	case model.UDP:
		return 17
	case model.SCTP:
		return 132
	}
	return tcpProto
}

// refreshAfter is how old the balance collector's last walk may be before
// explain svc walks the table again.
const refreshAfter = 5 * time.Second

// Service answers "explain svc": the per-endpoint spread of the Service's
// established connections from the balance collector.
func (x *Explainer) Service(name model.NamespacedName) (*ServiceReport, error) {
	if x.Balance == nil || x.State == nil {
		return nil, errors.New("explain svc: the spread comes from the daemon's connection-balance collector, which is not running here")
	}
	if err := x.Balance.Refresh(refreshAfter); err != nil {
		return nil, fmt.Errorf("explain svc: walk the conntrack table: %w", err)
	}
	sp, at, ok := x.Balance.Spread(name)
	if at.IsZero() {
		return nil, errors.New("explain svc: the connection-balance collector has not walked the conntrack table yet")
	}
	if !ok {
		return nil, fmt.Errorf("explain svc %v: %w programmed on this node", name, ErrNotFound)
	}
	r := &ServiceReport{Service: name, ReadBy: x.ReadBy, At: at.UTC(), Spread: sp}
	if s := x.State(); s != nil {
		for _, p := range s.Sorted() {
			if p.Key.Service() == name {
				var dst []string
				for _, d := range p.Destinations() {
					dst = append(dst, d.Addr.String())
				}
				r.Ports = append(r.Ports, fmt.Sprintf("%s/%s → %s", p.Key.Port, p.Key.Protocol, strings.Join(dst, ", ")))
			}
		}
	}
	return r, nil
}
