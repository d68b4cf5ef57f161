package explain

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/iptables"
)

// IPTables reads iptables mode's rules with iptables-save of one variant.
type IPTables struct {
	Variant iptables.Variant
	// Config is what proxyd renders with; drift needs it, and Counters
	// (when set) the nfacct counters its rules bump.
	Config   proxier.Config
	Counters func() iptables.Counters
	// Local reports whether an address is the node's (default: the
	// addresses of this network namespace's interfaces).
	Local func(netip.Addr) bool

	// Where the kernel's state is read; tests point them elsewhere.
	Save      func(ctx context.Context, fam model.IPFamily) ([]byte, error)
	RecentDir string
	TimerList string
	Uptime    string
}

// Name implements Dataplane.
func (d *IPTables) Name() string { return "iptables-" + string(d.Variant) }

func (d *IPTables) save(ctx context.Context, fam model.IPFamily) ([]byte, error) {
	if d.Save != nil {
		return d.Save(ctx, fam)
	}
	b := iptables.DefaultBinaries(d.Variant)
	name := b.Save
	if fam == model.IPv6 {
		name = b.Save6
	}
	out, err := exec.CommandContext(ctx, name).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

func (d *IPTables) paths() (recent, timerList, uptime string) {
	recent, timerList, uptime = d.RecentDir, d.TimerList, d.Uptime
	if recent == "" {
		recent = "/proc/net/xt_recent"
	}
	if timerList == "" {
		timerList = "/proc/timer_list"
	}
	if uptime == "" {
		uptime = "/proc/uptime"
	}
	return recent, timerList, uptime
}

// Trace implements Dataplane.
func (d *IPTables) Trace(ctx context.Context, q Query) (*Trace, error) {
	fam := model.FamilyOf(q.Dst.Addr())
	text, err := d.save(ctx, fam)
	if err != nil {
		return nil, err
	}
	var tr *iptables.Tracer
	if fam == model.IPv4 {
		tr, err = iptables.NewKernelTracer(text, nil)
	} else {
		tr, err = iptables.NewKernelTracer(nil, text)
	}
	if err != nil {
		return nil, fmt.Errorf("parse iptables-save output: %w", err)
	}
	local := d.Local
	if local == nil {
		local = InterfaceAddrs()
	}
	tr.SetLocal(local)
	now := time.Now()
	tr.SetClock(func() time.Time { return now })

	out := &Trace{}
	affinity, note := d.affinity(tr, fam, q.Src, now)
	p := flowspec.Packet{Src: q.Src, Dst: q.Dst, Proto: q.Proto, FromNode: q.FromNode}
	outcomes, err := tr.Enumerate(p)
	if err != nil {
		return nil, fmt.Errorf("trace the kernel's rules: %w", err)
	}
	for _, o := range outcomes {
		oc := Outcome{Verdict: o.Verdict.String(), Probability: o.Probability, Masquerade: o.Masquerade}
		if o.Verdict == flowspec.DNAT {
			oc.Endpoint = o.Endpoint
		}
		for _, s := range o.Path {
			oc.Path = append(oc.Path, Step{Table: s.Table, Chain: s.Chain, Rule: s.String()})
			if out.Service == nil {
				if ref := serviceOf(s, q.Proto); ref != nil {
					out.Service, out.MatchedBy = ref, &Step{Table: s.Table, Chain: s.Chain, Rule: s.String()}
				}
			}
		}
		if o.Masquerade {
			oc.MasqueradeWhy = masqueradeWhy(o.Path, q.Src)
		}
		out.Outcomes = append(out.Outcomes, oc)
	}
	if svcChain := chainOf(out.Outcomes, "PROXYD-SVC-"); svcChain != "" {
		out.NoMasqueradeWhy = noMasqueradeWhy(tr.ChainRules(fam, "nat", svcChain), q.Src)
		for _, list := range recentLists(tr.ChainRules(fam, "nat", svcChain)) {
			out.Affinity = append(out.Affinity, affinity[list]...)
		}
	}
	if note != "" && len(out.Affinity) > 0 {
		for i := range out.Affinity {
			out.Affinity[i].Where += " (" + note + ")"
		}
	}
	return out, nil
}

// affinity reads the kernel's recent lists, puts src's entries into the
// tracer and returns them by list name.
func (d *IPTables) affinity(tr *iptables.Tracer, fam model.IPFamily, src netip.Addr, now time.Time) (map[string][]Affinity, string) {
	dir, timerList, uptime := d.paths()
	lists, err := readRecent(dir)
	if err != nil {
		return nil, "could not read " + dir + ": " + err.Error()
	}
	clock, clockErr := readJiffies(timerList, uptime)
	note := ""
	if clockErr != nil {
		note = "age unknown: " + clockErr.Error() + "; assumed recent"
	}
	out := map[string][]Affinity{}
	for name, entries := range lists {
		ep, seconds, ok := tr.AffinityTarget(fam, name)
		if !ok {
			continue
		}
		for _, e := range entries {
			if e.addr != src {
				continue
			}
			a := Affinity{Client: src, Endpoint: ep, Where: "xt_recent list " + name, Timeout: time.Duration(seconds) * time.Second, Active: true}
			seen := now
			if clockErr == nil {
				a.Age, a.AgeKnown = clock.age(e.lastSeen), true
				a.Active = seconds == 0 || a.Age < a.Timeout
				seen = now.Add(-a.Age)
			}
			tr.SetRecent(name, src, seen)
			out[name] = append(out[name], a)
		}
	}
	return out, note
}

// serviceOf names the Service port a dispatch rule sends the packet to,
// from the comment proxyd writes on it.
func serviceOf(s iptables.Step, proto model.Protocol) *ServiceRef {
	target := s.Target()
	var kind string
	comment := s.Comment()
	switch {
	case s.Chain == iptables.ChainNodePorts && strings.HasPrefix(target, "PROXYD-EXT-"):
		kind = "NodePort"
	case s.Chain != iptables.ChainServices:
		return nil
	case strings.HasSuffix(comment, " cluster IP") && strings.HasPrefix(target, "PROXYD-SVC-"):
		kind, comment = "ClusterIP", strings.TrimSuffix(comment, " cluster IP")
	case strings.HasSuffix(comment, " external IP"):
		kind, comment = "external IP", strings.TrimSuffix(comment, " external IP")
	case strings.HasSuffix(comment, " loadbalancer IP"):
		kind, comment = "load-balancer IP", strings.TrimSuffix(comment, " loadbalancer IP")
	case strings.HasSuffix(comment, " has no endpoints"), strings.HasSuffix(comment, " has no local endpoints"):
		kind, comment = "ClusterIP", comment[:strings.Index(comment, " has no ")]
	default:
		return nil
	}
	ns, rest, ok := strings.Cut(comment, "/")
	if !ok {
		return nil
	}
	name, port, _ := strings.Cut(rest, ":")
	return &ServiceRef{Namespace: ns, Name: name, Port: port, Protocol: proto, Kind: kind}
}

// masqueradeWhy says why the rule that requested masquerade on path
// applies to a packet from src.
func masqueradeWhy(path []iptables.Step, src netip.Addr) string {
	for _, s := range path {
		if s.Target() != iptables.ChainMarkMasq {
			continue
		}
		rule := " (" + s.Chain + ": " + s.String() + ")"
		if cidr, ok := s.Arg("-s"); ok && s.Negated("-s") {
			return fmt.Sprintf("the source %v is outside the cluster CIDR %s%s", src, cidr, rule)
		}
		if _, ok := s.Arg("-s"); ok && strings.HasPrefix(s.Chain, "PROXYD-SEP-") {
			return fmt.Sprintf("hairpin: the client %v is the endpoint it was sent to, which must see the node as the source%s", src, rule)
		}
		comment := s.Comment()
		switch {
		case strings.HasPrefix(comment, "masquerade LOCAL traffic"):
			return "the node itself sends it to an externalTrafficPolicy Local destination" + rule
		case strings.HasPrefix(comment, "masquerade traffic for"):
			return "external traffic (NodePort, external or load-balancer IP) with externalTrafficPolicy Cluster: replies must come back through this node" + rule
		case strings.HasSuffix(comment, " cluster IP"):
			return "--masquerade-all" + rule
		}
		return "rule" + rule
	}
	return ""
}

// noMasqueradeWhy says why a ClusterIP packet from src is not masqueraded,
// from the service chain's masquerade rule.
func noMasqueradeWhy(rules []iptables.Step, src netip.Addr) string {
	for _, s := range rules {
		if s.Target() != iptables.ChainMarkMasq {
			continue
		}
		if cidr, ok := s.Arg("-s"); ok && s.Negated("-s") {
			return fmt.Sprintf("the source %v is inside the cluster CIDR %s, and no endpoint is the client itself (no hairpin)", src, cidr)
		}
	}
	return "no rule on its path masquerades it (no cluster CIDR is configured, so only hairpin traffic is masqueraded)"
}

// chainOf returns the first chain with prefix on any outcome's path.
func chainOf(out []Outcome, prefix string) string {
	for _, o := range out {
		for _, s := range o.Path {
			if strings.HasPrefix(s.Chain, prefix) {
				return s.Chain
			}
		}
	}
	return ""
}

// recentLists are the lists the service chain checks (--rcheck).
func recentLists(rules []iptables.Step) []string {
	var out []string
	for _, s := range rules {
		if !strings.Contains(s.String(), "--rcheck") {
			continue
		}
		if name, ok := s.Arg("--name"); ok {
			out = append(out, name)
		}
	}
	return out
}

// Drift implements Dataplane: proxyd's chains and jumps in iptables-save
// output against Render of s, per family s uses.
func (d *IPTables) Drift(ctx context.Context, s *model.State) ([]string, error) {
	var out []string
	for _, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
		kernel, err := d.save(ctx, fam)
		if err != nil {
			return nil, err
		}
		var counters iptables.Counters
		if d.Counters != nil {
			counters = d.Counters()
		}
		diff, err := iptables.Drift(kernel, iptables.RenderCounting(s, d.Config, fam, counters))
		if err != nil {
			return nil, fmt.Errorf("%v: %w", fam, err)
		}
		for _, l := range diff {
			out = append(out, fam.String()+" "+l)
		}
	}
	return out, nil
}
