package explain

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/nftables"
)

// NFTables reads nftables mode's tables, ip proxyd and ip6 proxyd, back
// from the kernel over netlink (pkg/nft's Reader: no nft binary) and
// traces them with pkg/nft's tracer.
type NFTables struct {
	// Config is what proxyd renders with; drift needs it.
	Config proxier.Config
	// Families are those proxyd programs (default both); drift compares
	// their tables.
	Families []model.IPFamily
	// Local reports whether an address is the node's (default: the
	// addresses of this network namespace's interfaces).
	Local func(netip.Addr) bool
	// NetNSFD is the network namespace to read (0: this process's).
	NetNSFD int
	// Read reads one table, nil when there is none; tests replace it.
	Read func(ctx context.Context, f nft.Family, name string) (*nft.Table, error)
}

// Name implements Dataplane.
func (d *NFTables) Name() string { return "nftables" }

func (d *NFTables) read(ctx context.Context, f model.IPFamily) (*nft.Table, error) {
	fam := nft.IP
	if f == model.IPv6 {
		fam = nft.IP6
	}
	if d.Read != nil {
		return d.Read(ctx, fam, nftables.TableName)
	}
	r, err := nft.NewReader(d.NetNSFD)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Table(fam, nftables.TableName)
}

// Trace implements Dataplane: the table of the query's family, traced by
// every branch of its random choices.
func (d *NFTables) Trace(ctx context.Context, q Query) (*Trace, error) {
	fam := model.FamilyOf(q.Dst.Addr())
	t, err := d.read(ctx, fam)
	if err != nil {
		return nil, err
	}
	out := &Trace{}
	var tables []*nft.Table
	if t == nil {
		out.Notes = append(out.Notes, fmt.Sprintf("the kernel has no table %s %s: nothing of proxyd's sees this packet", nftFamilyName(fam), nftables.TableName))
	} else {
		tables = append(tables, t)
	}
	local := d.Local
	if local == nil {
		local = InterfaceAddrs()
	}
	outs, outcomes, err := nftOutcomes(nft.NewTracer(local, tables), q)
	if err != nil {
		return nil, err
	}
	out.Outcomes = outcomes
	out.Service, out.MatchedBy = nftablesService(outs, q)
	if out.MatchedBy == nil {
		out.MatchedBy = nftDecidedBy(outs)
	}
	out.NoMasqueradeWhy = nftNoMasqueradeWhy(outs, q.Src)
	out.Affinity = nftAffinity(outs, q.Src)
	return out, nil
}

func nftFamilyName(f model.IPFamily) string {
	if f == model.IPv6 {
		return "ip6"
	}
	return "ip"
}

// Chain prefixes nftables mode names a service port's chains with.
const (
	svcPrefix = "svc-"
	extPrefix = "ext-"
	fwPrefix  = "fw-"
)

// nftablesService finds the first chain of a service port on any
// outcome's path (nftables mode names them svc-, ext- and fw- followed by
// NAMESPACE/NAME/PROTOCOL/PORT) and the rule that sent the packet there.
func nftablesService(outs []nft.Outcome, q Query) (*ServiceRef, *Step) {
	proto := q.Proto
	for _, o := range outs {
		for i, s := range o.Path {
			if s.Table == nil {
				continue
			}
			kind := ""
			var rest string
			switch {
			case dispatchComment(s, q) != "":
				// A ClusterIP port without a chain of its own: its
				// dispatch element names it.
				kind, rest = "ClusterIP", dispatchComment(s, q)
				parts := strings.Split(rest, "/")
				if len(parts) != 4 {
					continue
				}
				step := nftStep(s)
				return &ServiceRef{Namespace: parts[0], Name: parts[1], Port: parts[3], Protocol: proto, Kind: kind}, &step
			case strings.HasPrefix(s.Chain, svcPrefix):
				kind, rest = "ClusterIP", strings.TrimPrefix(s.Chain, svcPrefix)
			case strings.HasPrefix(s.Chain, fwPrefix):
				kind, rest = "load-balancer IP", strings.TrimPrefix(s.Chain, fwPrefix)
			case strings.HasPrefix(s.Chain, extPrefix):
				kind, rest = "external IP", strings.TrimPrefix(s.Chain, extPrefix)
			default:
				continue
			}
			parts := strings.Split(rest, "/")
			if len(parts) != 4 {
				continue
			}
			by := s
			if i > 0 {
				by = o.Path[i-1]
			}
			if kind == "external IP" && !readsDestination(ruleOf(by)) {
				kind = "NodePort"
			}
			step := nftStep(by)
			return &ServiceRef{Namespace: parts[0], Name: parts[1], Port: parts[3], Protocol: proto, Kind: kind}, &step
		}
	}
	return nil, nil
}

// dispatchComment is the comment of the element of the verdict map that
// step's rule dispatched q by, when the map is keyed by q's destination
// (nftables mode names a ClusterIP port there when it has no chain).
func dispatchComment(s nft.Step, q Query) string {
	for _, st := range ruleOf(s) {
		v, ok := st.(nft.Vmap)
		if !ok || !hasDestination(v.Key) {
			continue
		}
		m := s.Table.Set(v.Map)
		if m == nil {
			return ""
		}
		var key []nft.Value
		for _, f := range v.Key {
			switch f {
			case nft.IPDaddr, nft.IP6Daddr:
				key = append(key, nft.AddrValue(q.Dst.Addr()))
			case nft.MetaL4Proto:
				key = append(key, nft.NumValue(uint32(q.Proto.Number())))
			case nft.THDport:
				key = append(key, nft.NumValue(uint32(q.Dst.Port())))
			default:
				return ""
			}
		}
		for _, e := range m.Elements {
			if e.Comment != "" && slices.Equal(e.Key, key) {
				return e.Comment
			}
		}
	}
	return ""
}

// readsDestination reports whether a rule's lookups read the destination
// address (a dispatch by address, not a NodePort's by port).
func readsDestination(r nft.Rule) bool {
	for _, st := range r {
		switch st := st.(type) {
		case nft.Vmap:
			return hasDestination(st.Key)
		case nft.Lookup:
			if hasDestination(st.Key) {
				return true
			}
		}
	}
	return false
}

// Drift implements Dataplane: each family's table as the kernel holds it
// against Render of s, compared canonically.
func (d *NFTables) Drift(ctx context.Context, s *model.State) ([]string, error) {
	fams := d.Families
	if len(fams) == 0 {
		fams = []model.IPFamily{model.IPv4, model.IPv6}
	}
	var out []string
	for _, f := range fams {
		have, err := d.read(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, l := range nft.Drift(have, nftables.Render(s, d.Config, f)) {
			if !strings.HasPrefix(l, "table ") {
				l = nftFamilyName(f) + " " + nftables.TableName + ": " + l
			}
			out = append(out, l)
		}
	}
	return out, nil
}
