package ipvs

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	mobyipvs "github.com/moby/ipvs"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// Drift repair. Each Sync compares the kernel with what the last successful
// Sync left there, not only with what it wants now, so that a change made
// by someone else (a virtual or real server deleted, a weight set, an
// address taken off proxyd-ipvs0, the proxyd-ipvs table flushed or deleted)
// is told apart from proxyd's own changes, logged, undone and counted in
// SyncStats.DriftRepairs (proxyd_drift_repairs_total{mode="ipvs"}).
//
// What each periodic Sync reads to find it: the ruleset generation (one
// netlink request, whatever the size of the table), and only when another
// writer committed since proxyd's own last write, the proxyd-ipvs table;
// IPVS keeps no such counter, so one dump of the virtual servers, one of
// each virtual server's real servers and one of proxyd-ipvs0's addresses.

// repaired records one thing the kernel held otherwise than proxyd had
// left it, which this Sync puts back.
func (p *Proxier) repaired(format string, args ...any) {
	what := fmt.Sprintf(format, args...)
	p.repairs = append(p.repairs, what)
	p.log.Warn("repairing drift: the kernel was changed by someone else", "found", what)
}

// noteRealServerDrift records how the kernel's real servers of vs (have)
// differ from what the last Sync left (prev's, at their weights, and the
// draining ones at weight 0). A nil prev records nothing.
func (p *Proxier) noteRealServerDrift(vs VSKey, prev *VirtualServer, have []*mobyipvs.Destination) {
	if prev == nil {
		return
	}
	left := slices.Clone(prev.RealServers)
	for dk := range p.draining {
		if dk.VS == vs {
			left = append(left, RealServer{Addr: dk.RS})
		}
	}
	kernel := make([]RealServer, 0, len(have))
	for _, d := range have {
		kernel = append(kernel, RealServer{Addr: destAddr(d), Weight: d.Weight})
		if d.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask != mobyipvs.ConnectionFlagMasq {
			p.repaired("real server %s of %s is not forwarded by masquerading", destAddr(d), vs)
		}
	}
	for _, d := range realServerDrift(vs, kernel, left) {
		p.repaired("%s", d)
	}
}

// syncFirewall writes the proxyd-ipvs table when rules differ from what the
// last Sync wrote, or when someone else changed the table. The ruleset
// generation tells whether anyone committed since proxyd's own write (it
// is the generation before that write, plus one); only then is the table
// read back and compared. A table the kernel refuses is narrowed to the
// service ports responsible (proxier.Bisect) and written without them.
func (p *Proxier) syncFirewall(desired *Table, rules *Ruleset, trusted bool) (int, error) {
	gen, genErr := p.fw.Generation()
	text := rules.String() // what Ruleset.Equal compares, the last one's kept
	if trusted && p.rules != nil && text == p.rulesText {
		if genErr != nil {
			return 0, genErr
		}
		if p.genKnown && gen == p.gen {
			return 0, nil
		}
		have, err := p.fw.Read()
		if err != nil {
			return 0, err
		}
		drift := nft.Drift(have, rules.Table())
		if len(drift) == 0 {
			p.gen, p.genKnown = gen, true
			return 0, nil
		}
		p.repaired("table inet %s: %s", TableName, strings.Join(drift, "; "))
	}
	p.genKnown = false
	if err := p.fw.Apply(rules); err != nil {
		return 0, p.containFirewall(desired, err)
	}
	p.rules, p.rulesText = rules, text
	p.gen, p.genKnown = gen+1, genErr == nil
	return 1, nil
}

// containFirewall narrows a refused table to the service ports whose rules
// the kernel refuses, writes the table without them and returns a
// proxier.RefusedError naming them. Each of Bisect's tries is a whole
// table committed or refused at once; while it narrows, the ports a try
// leaves out lack their rules for that moment.
func (p *Proxier) containFirewall(desired *Table, refusal error) error {
	var keys []model.ServicePortKey
	for _, vs := range desired.Servers {
		keys = append(keys, vs.Service)
	}
	var written *Ruleset
	culprits, err := proxier.Bisect(keys, func(exclude []model.ServicePortKey) error {
		r := RenderNetfilter(desired.without(exclude), p.cfg)
		if err := p.fw.Apply(r); err != nil {
			return err
		}
		written = r
		return nil
	})
	if written != nil {
		// What is in the kernel now; the next Sync writes the whole table again.
		p.rules, p.rulesText = written, written.String()
	}
	if err != nil {
		return fmt.Errorf("write table inet %s: %w (narrowing to service ports: %w)", TableName, refusal, err)
	}
	p.log.Error("the kernel refused the nftables rules of service ports; left out, everything else written", "servicePorts", culprits, "err", refusal)
	return &proxier.RefusedError{Ports: culprits, Err: fmt.Errorf("write table inet %s: %w", TableName, refusal)}
}

// without returns t without the virtual servers of the service ports in
// exclude.
func (t *Table) without(exclude []model.ServicePortKey) *Table {
	c := *t
	c.Servers = map[VSKey]*VirtualServer{}
	for k, vs := range t.Servers {
		if !slices.Contains(exclude, vs.Service) {
			c.Servers[k] = vs
		}
	}
	return &c
}

// refusals collects the virtual servers the kernel refused, by service
// port, so that one refused virtual server stops no other.
type refusals struct {
	ports []model.ServicePortKey
	errs  []error
}

func (r *refusals) add(k model.ServicePortKey, err error) {
	r.ports = append(r.ports, k)
	r.errs = append(r.errs, err)
}

// err is nil without refusals, else a proxier.RefusedError.
func (r *refusals) err() error {
	if len(r.ports) == 0 {
		return nil
	}
	ports := slices.Clone(r.ports)
	slices.SortFunc(ports, model.ServicePortKey.Compare)
	return &proxier.RefusedError{Ports: slices.Compact(ports), Err: errors.Join(r.errs...)}
}
