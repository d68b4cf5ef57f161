package iptables

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/internal/nfgen"
	"github.com/proxyd/proxyd/pkg/model"
)

// Drift: someone else changed proxyd's chains or the jumps into them (a
// firewall reload that flushes and deletes every chain, a chain flushed by
// hand, a rule inserted into a proxyd chain, a jump deleted). Each sync
// reads a mark of the tables that costs the same whatever their size;
// only when it moved since proxyd's own last write does it list the
// tables (iptables-save) and compare what it finds with what it wrote,
// and only a difference makes it rewrite the family in full.

// mark is a fingerprint of a family's tables: equal marks mean nobody
// wrote them in between.
type mark [4]uint32

// watcher reads a family's mark.
type watcher interface {
	mark() (mark, error)
	// counting reports whether the mark counts writes (the nftables
	// generation): a restore of n table sections and k single rules then
	// moves it by exactly n+k, so a foreign write in between shows.
	counting() bool
}

// nftWatcher marks the tables of iptables-nft with the nftables ruleset
// generation of the network namespace: one netlink round trip, moved by
// every commit of anyone.
type nftWatcher struct{}

func (nftWatcher) mark() (mark, error) {
	g, err := nfgen.Generation()
	return mark{g}, err
}

func (nftWatcher) counting() bool { return true }

// legacyWatcher marks the tables of iptables-legacy with what the kernel
// says about nat and filter without copying them (IPT_SO_GET_INFO): their
// number of entries and size in bytes, which any added, deleted or flushed
// rule or chain changes. (A rule replaced by one of the same size is not
// seen; the periodic verification catches it.)
type legacyWatcher struct{ fam model.IPFamily }

func (w legacyWatcher) mark() (mark, error) {
	var m mark
	for i, table := range []string{tableNAT, tableFilter} {
		entries, size, err := xtInfo(w.fam, table)
		if err != nil {
			return mark{}, err
		}
		m[2*i], m[2*i+1] = entries, size
	}
	return m, nil
}

func (legacyWatcher) counting() bool { return false }

// xtInfo asks the kernel for a legacy table's number of entries and size
// (getsockopt IPT_SO_GET_INFO / IP6T_SO_GET_INFO on a raw socket), which
// costs the same whatever the table holds.
func xtInfo(fam model.IPFamily, table string) (entries, size uint32, err error) {
	domain, level := unix.AF_INET, unix.SOL_IP
	if fam == model.IPv6 {
		domain, level = unix.AF_INET6, unix.SOL_IPV6
	}
	fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return 0, 0, fmt.Errorf("raw socket for %s info: %w", table, err)
	}
	defer unix.Close(fd)
	// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5],
	// underflow[5], num_entries, size.
	var info struct {
		name                 [32]byte
		validHooks           uint32
		hookEntry, underflow [5]uint32
		numEntries, size     uint32
	}
	copy(info.name[:], table)
	l := uint32(unsafe.Sizeof(info))
	const soGetInfo = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soGetInfo,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return 0, 0, fmt.Errorf("%s table info: %w", table, errno)
	}
	return info.numEntries, info.size, nil
}

// markBook follows the marks through one sync: the mark each watcher
// showed before any write, and the commits proxyd made since. Families of
// one network namespace share the iptables-nft watcher (equal values), so
// their writes add up.
type markBook struct {
	before  map[watcher]markRead
	commits map[watcher]int
}

type markRead struct {
	m   mark
	err error
}

func newMarkBook() *markBook {
	return &markBook{before: map[watcher]markRead{}, commits: map[watcher]int{}}
}

// start reads w's mark before the sync writes anything (once per watcher).
func (b *markBook) start(w watcher) (mark, error) {
	r, ok := b.before[w]
	if !ok {
		r.m, r.err = w.mark()
		b.before[w] = r
	}
	return r.m, r.err
}

// wrote records a restore of n table sections watched by w.
func (b *markBook) wrote(w watcher, n int) { b.commits[w] += n }

// finish records, in every family proxyd holds a view of, the mark its
// tables show now, trusted only when nothing but proxyd's own writes can
// have moved it since the start: for a counting mark, when it moved by
// exactly proxyd's commits; otherwise when proxyd wrote (a write racing
// its own goes unseen until the hourly comparison) or it did not move.
func (b *markBook) finish(fams []*family) {
	after := map[watcher]markRead{}
	for _, f := range fams {
		if f.w == nil {
			continue
		}
		r, ok := after[f.watch]
		if !ok {
			r.m, r.err = f.watch.mark()
			after[f.watch] = r
		}
		before := b.before[f.watch]
		n := b.commits[f.watch]
		trusted := r.err == nil && before.err == nil
		if f.watch.counting() {
			trusted = trusted && r.m[0]-before.m[0] == uint32(n)
		} else {
			trusted = trusted && (n > 0 || r.m == before.m)
		}
		f.mark, f.markOK = r.m, trusted
	}
}

// drifted reports whether the family's tables differ from what proxyd
// wrote, and logs what it found. m is the mark they show (err why it
// could not be read); only when it moved since proxyd's last write (or
// every verifyEvery, or when it cannot be read) does it list and compare
// the tables.
func (f *family) drifted(ctx context.Context, m mark, err error, now time.Time, verifyEvery time.Duration) (bool, error) {
	due := verifyEvery > 0 && now.Sub(f.lastVerify) >= verifyEvery
	if err == nil && f.markOK && m == f.mark && !due {
		return false, nil
	}
	if err != nil {
		klog.V(2).InfoS("Could not read the iptables tables' mark; comparing them", "family", f.fam, "err", err)
	}
	found, verr := f.verify(ctx)
	if verr != nil {
		return false, verr
	}
	f.lastVerify = now
	if len(found) == 0 {
		f.mark, f.markOK = m, err == nil
		return false, nil
	}
	shown := found
	if len(shown) > 10 {
		shown = append(slices.Clip(shown[:10]), fmt.Sprintf("and %d more", len(found)-10))
	}
	klog.InfoS("Someone else changed proxyd's iptables rules; rewriting them", "family", f.fam, "found", strings.Join(shown, "; "))
	return true, nil
}

// verify lists nat and filter and compares proxyd's chains and jumps with
// what it wrote: every chain there with as many rules, no other PROXYD-*
// chain, every jump rule in its built-in chain. It returns what differs.
func (f *family) verify(ctx context.Context) ([]string, error) {
	want := f.w.chainRules()
	var found []string
	for _, table := range []string{tableFilter, tableNAT} {
		ops, err := f.listOps(ctx, table)
		if err != nil {
			return nil, err
		}
		have := map[string]int{}
		var rules []op
		for _, o := range ops {
			switch o.kind {
			case opChain:
				have[o.chain] += 0
			case opAppend:
				have[o.chain]++
				rules = append(rules, o)
			}
		}
		for _, c := range slices.Sorted(maps.Keys(want[table])) {
			n, ok := have[c]
			switch {
			case !ok:
				found = append(found, fmt.Sprintf("%s chain %s is gone", table, c))
			case n != want[table][c]:
				found = append(found, fmt.Sprintf("%s chain %s holds %d rules, proxyd wrote %d", table, c, n, want[table][c]))
			}
		}
		for _, c := range slices.Sorted(maps.Keys(have)) {
			if _, ok := want[table][c]; !ok && strings.HasPrefix(c, chainPrefix) {
				found = append(found, fmt.Sprintf("%s chain %s is not one proxyd wrote", table, c))
			}
		}
		for _, j := range jumpRules {
			if j.table == table && !slices.ContainsFunc(rules, func(o op) bool { return o.chain == j.chain && slices.Equal(o.rule, j.spec) }) {
				found = append(found, fmt.Sprintf("the jump from %s %s to %s is gone", table, j.chain, j.target()))
			}
		}
	}
	return found, nil
}

// chainRules is how many rules each chain proxyd wrote holds, per table.
func (w *written) chainRules() map[string]map[string]int {
	out := map[string]map[string]int{tableNAT: {}, tableFilter: {}}
	for i, c := range w.base {
		out[baseTables[i]][c.name] = c.rules
	}
	for p, c := range partChains {
		out[c.table][c.name] += strings.Count(w.heads[p], "\n") + strings.Count(w.tails[p], "\n")
	}
	for _, sw := range w.sps {
		for p, n := range sw.partRules {
			out[partChains[p].table][partChains[p].name] += n
		}
		for _, c := range sw.chains {
			out[tableNAT][c.name] = c.rules
		}
	}
	return out
}
