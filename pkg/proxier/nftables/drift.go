package nftables

import (
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier"
)

// driftCheck notices what someone else did to proxyd's tables. The kernel
// counts every committed nf_tables transaction in the namespace's ruleset
// generation; proxyd remembers the generation its own last commit left.
// While the generation stays there nobody else committed anything, and a
// sync checks the kernel with that one request, whatever the size of the
// table. Once it moved (another table's writer, or someone changing
// proxyd's table), the tables are read back and compared with what proxyd
// last wrote; a table that differs is rewritten in full, in place.
type driftCheck struct {
	netnsFD int
	gen     uint32       // the generation proxyd's last commit left
	known   bool         // gen is that generation: no commit since is proxyd's
	last    *model.State // what proxyd last wrote
	read    bool         // the sync started with the generation read
}

// start reads the generation: clean reports that nobody but proxyd
// committed since its last sync.
func (d *driftCheck) start(conn *nft.Conn) (gen uint32, clean bool) {
	g, err := conn.Generation()
	d.read = err == nil
	if err != nil {
		klog.InfoS("Could not read the nf_tables generation; checking the tables", "err", err)
		return 0, false
	}
	return g, d.known && g == d.gen && d.last != nil
}

// repairNeeded reads proxyd's table of family f back and compares it with
// what proxyd last wrote, logging what differs.
func (d *driftCheck) repairNeeded(cfg proxier.Config, f model.IPFamily) bool {
	if d.last == nil {
		return false
	}
	want := Render(d.last, cfg, f)
	r, err := nft.NewReader(d.netnsFD)
	if err != nil {
		klog.InfoS("Could not read the nftables table back; rewriting it", "family", f, "err", err)
		return true
	}
	defer r.Close()
	have, err := r.Table(nftFamily(f), TableName)
	var diffs []string
	if err != nil {
		diffs = []string{"unreadable: " + err.Error()}
	} else {
		diffs = nft.Drift(have, want)
	}
	if len(diffs) == 0 {
		return false
	}
	shown := diffs[:min(len(diffs), 10)]
	klog.InfoS("nftables table changed outside proxyd, repairing it", "family", f, "differences", len(diffs), "found", shown)
	return true
}

// done records the generation after the sync's commits: proxyd's own if
// nobody else committed in between (each of proxyd's transactions counts
// one), else none, so that the next sync compares the tables.
func (d *driftCheck) done(conn *nft.Conn, before uint32, s *model.State, commits int) {
	d.last = s
	g, err := conn.Generation()
	d.gen, d.known = g, d.read && err == nil && g == before+uint32(commits)
}

// forget makes the next sync compare the tables.
func (d *driftCheck) forget() { d.known = false }

// programmed is service port k as proxyd last wrote it, nil if it did not.
func (d *driftCheck) programmed(k model.ServicePortKey) *model.ServicePort {
	if d.last == nil {
		return nil
	}
	return d.last.Services[k]
}
