package explain

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// WriteText prints r for people: what happens, which rule decided, and
// anything that looks wrong, loudly.
func (r *Report) WriteText(w io.Writer) error {
	p := &printer{w: w}
	q := r.Query
	how := "forwarded by the node (prerouting)"
	if q.FromNode {
		how = "sent by the node itself (output)"
	}
	p.f("%s %v → %v, a new connection %s\n", strings.ToLower(string(q.Proto)), q.Src, q.Dst, how)
	p.f("rules: %s, read from the kernel by the %s at %s\n\n", r.Dataplane, r.ReadBy, r.At.Format(time.RFC3339))

	switch {
	case r.Service != nil:
		p.f("Service     %v, by its %s\n", r.Service, r.Service.Kind)
		if r.MatchedBy != nil {
			p.f("  matched   %s: %s\n", where(*r.MatchedBy), r.MatchedBy.Rule)
		}
	case r.MatchedBy != nil:
		model := ""
		if r.Model != nil {
			model = fmt.Sprintf(" (proxyd's model: %v, by its %s)", r.Model, r.Model.Kind)
		}
		p.f("Service     not named by the kernel's rules%s\n", model)
		p.f("  matched   %s\n", where(*r.MatchedBy)+": "+r.MatchedBy.Rule)
	case r.Model != nil:
		p.f("Service     none in the kernel's rules (proxyd's model: %v)\n", r.Model)
	default:
		p.f("Service     none: no rule of proxyd's claims this destination\n")
	}
	p.f("Verdict     %s\n", r.verdictLine())
	if r.Verdict == "dnat" || r.Verdict == "mixed" {
		p.f("Masquerade  %s", r.Masquerade.Decision)
		for i, why := range r.Masquerade.Why {
			if i == 0 {
				p.f(": %s", why)
			} else {
				p.f("\n            and %s", why)
			}
		}
		p.f("\n")
	}

	if prefix := commonPath(r.Outcomes); len(prefix) > 0 {
		p.f("\nPath        the rules that matched, in order\n")
		for _, s := range prefix {
			p.f("  %s\n", stepLine(s))
		}
	}
	if len(r.Outcomes) > 0 {
		p.f("\nOutcomes    exact probabilities, computed from the rules (not sampled)\n")
		n := len(commonPath(r.Outcomes))
		for _, o := range r.Outcomes {
			what := o.Verdict
			if o.Verdict == "dnat" {
				what = o.Endpoint.String()
			}
			masq := ""
			if o.Masquerade && r.Masquerade.Decision == "for some endpoints" {
				masq = "  (masqueraded)"
			}
			by := ""
			if len(r.Outcomes) > 1 && n < len(o.Path) {
				by = "  by " + o.Path[n].Rule
				if s := o.Path[n]; s.Hook != "" {
					by = "  by " + where(s) + ": " + s.Rule
				}
			}
			p.f("  %-22s %8.4f%%%s%s\n", what, 100*o.Probability, masq, by)
		}
	}
	if sc := r.Scheduler; sc != nil {
		var w []string
		for rs, weight := range sc.Weights {
			w = append(w, fmt.Sprintf("%s %d", rs, weight))
		}
		slices.Sort(w)
		p.f("Scheduler   %s of %s, weights %s\n            %s\n", sc.Name, sc.VirtualServer, strings.Join(w, ", "), sc.Does)
	}

	p.f("\n")
	if len(r.Affinity) == 0 {
		p.f("Affinity    none for %v\n", q.Src)
	}
	for _, a := range r.Affinity {
		state := "active: new connections from the client go there"
		if !a.Active {
			state = "expired: the next connection chooses anew"
		}
		age := "age unknown"
		if a.AgeKnown {
			age = fmt.Sprintf("last used %v ago", a.Age.Round(time.Second))
		}
		if a.Expires > 0 {
			age += fmt.Sprintf(", expires in %v", a.Expires.Round(time.Second))
		}
		p.f("Affinity    %v → %v in %s, %s, timeout %v: %s\n", a.Client, a.Endpoint, a.Where, age, a.Timeout, state)
	}
	p.f("Conntrack   %d established between %v and %v", len(r.Conntrack), q.Src, q.Dst)
	if r.ConntrackOther > 0 {
		p.f(" (and %d not established)", r.ConntrackOther)
	}
	p.f("\n")
	for _, c := range r.Conntrack {
		reply := ""
		if c.ReplyTo != c.Client {
			reply = fmt.Sprintf(", replies to %v (masqueraded)", c.ReplyTo)
		}
		p.f("  %s %s %v → %v answered by %v%s, expires in %v\n", c.Proto, c.State, c.Client, c.Dst, c.Endpoint, reply, c.Timeout)
	}
	switch {
	case !r.Drift.Known:
		p.f("Drift       %s\n", r.Drift.Why)
	case len(r.Drift.Differences) == 0:
		p.f("Drift       none: the kernel holds what proxyd programmed\n")
	default:
		p.f("\n!!! DRIFT: the kernel's rules differ from what proxyd programmed (%d differences):\n", len(r.Drift.Differences))
		for _, d := range r.Drift.Differences {
			p.f("!!!   %s\n", d)
		}
	}
	for _, n := range r.Notes {
		p.f("Note        %s\n", n)
	}
	return p.err
}

func (r *Report) verdictLine() string {
	dnat := 0
	for _, o := range r.Outcomes {
		if o.Verdict == "dnat" {
			dnat++
		}
	}
	switch r.Verdict {
	case "dnat":
		if dnat == 1 {
			return "dnat to " + r.Outcomes[0].Endpoint.String()
		}
		return fmt.Sprintf("dnat to one of %d endpoints", dnat)
	case "reject":
		return "reject: the client is refused at once (no endpoint, or a port or address no Service has)"
	case "drop":
		return "drop: silently discarded (a traffic policy leaves this node no endpoint, or a source range excludes the client)"
	case "untouched":
		return "untouched: no rule of proxyd's changes it; it goes on as addressed"
	case "mixed":
		return "depends on a random choice; see the outcomes"
	}
	return r.Verdict
}

// commonPath is the steps every outcome shares, from the start.
func commonPath(out []Outcome) []Step {
	if len(out) == 0 {
		return nil
	}
	prefix := out[0].Path
	for _, o := range out[1:] {
		n := 0
		for n < len(prefix) && n < len(o.Path) && prefix[n] == o.Path[n] {
			n++
		}
		prefix = prefix[:n]
	}
	return prefix
}

// where names the table and chain of a step ("ip proxyd nat-prerouting",
// "nat PROXYD-SERVICES"), or the pseudo-chain.
func where(s Step) string { return strings.TrimSpace(s.Table + " " + s.Chain) }

// stepLine prints one step of the path: iptables' in columns, the hooked
// ones (nftables, IPVS) after their hook.
func stepLine(s Step) string {
	if s.Hook == "" {
		return fmt.Sprintf("%-22s %s", s.Table+" "+shortChain(s.Chain), s.Rule)
	}
	return fmt.Sprintf("%-11s %s: %s", s.Hook, where(s), s.Rule)
}

func shortChain(c string) string {
	if len(c) > 16 {
		return c[:15] + "…"
	}
	return c
}

// WriteText prints the per-endpoint spread of one Service.
func (r *ServiceReport) WriteText(w io.Writer) error {
	p := &printer{w: w}
	s := r.Spread
	p.f("Service %v: %d established connections through this node, conntrack walked at %s\n", r.Service, s.Total, r.At.Format(time.RFC3339))
	for _, port := range r.Ports {
		p.f("  port %s\n", port)
	}
	p.f("\n  %-40s %11s %7s  %s\n", "endpoint", "connections", "share", "ready since (first programmed)")
	for _, e := range s.Endpoints {
		share := 0.0
		if s.Total > 0 {
			share = float64(e.Connections) / float64(s.Total)
		}
		ready := "not a candidate (not ready)"
		if e.Candidate {
			ready = e.ReadySince.UTC().Format(time.RFC3339)
			if e.ReadyAtStart {
				ready = "before proxyd started (" + ready + ")"
			}
		}
		p.f("  %-40s %11d %6.1f%%  %s  %s\n", e.IP, e.Connections, 100*share, bar(share), ready)
	}
	p.f("\n  largest share %.1f%%, %d ready endpoints without a connection\n", 100*s.MaxShare, s.Idle)
	if s.Pinned != "" {
		p.f("\n!!! PINNED: %s\n", s.Pinned)
	}
	for _, n := range r.Notes {
		p.f("Note: %s\n", n)
	}
	return p.err
}

func bar(share float64) string {
	n := int(share*20 + 0.5)
	return strings.Repeat("█", n) + strings.Repeat(" ", 20-n)
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}
