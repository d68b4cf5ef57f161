package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

// kernelView reads one contender's programmed state from the node netns.
type kernelView interface {
	// programmed counts the bench Services whose ClusterIP is dispatched.
	programmed(ctx context.Context, ips map[[4]byte]bool) (int, error)
	// ports finds each bench Service's port in the kernel, by its name.
	ports(ctx context.Context) (map[string]portRef, error)
	// endpoints counts the endpoints the port load-balances over.
	endpoints(ctx context.Context, p portRef) (int, error)
	// how names the reading method, for the report.
	how() string
	close()
}

// portRef is where a service port's endpoint choice is: its chain, or the
// key of its element in the service-ips map, whose verdict names the chain.
type portRef struct {
	chain string
	key   []byte
}

func ip4Key(s string) ([4]byte, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return [4]byte{}, fmt.Errorf("not an IPv4 address")
	}
	return a.As4(), nil
}

// iptView reads iptables by running iptables-save in the node netns.
type iptView struct {
	l      *lab.Lab
	prefix string // KUBE- or PROXYD-
	save   string // iptables-save or iptables-legacy-save, once known
	list   string // the matching iptables binary
}

func (v *iptView) how() string { return "exec " + v.saveCmd() + " / iptables -S in the node netns" }
func (v *iptView) close()      {}

func (v *iptView) saveCmd() string {
	if v.save == "" {
		return "iptables-save"
	}
	return v.save
}

// services parses the nat table: bench Service name -> SVC chain.
func (v *iptView) services(ctx context.Context) (map[string]string, error) {
	cands := []string{"iptables-save", "iptables-legacy-save"}
	if v.save != "" {
		cands = []string{v.save}
	}
	re := regexp.MustCompile(`^-A ` + v.prefix + `SERVICES .*--comment "?` + benchNS + `/(bench-\d+):` + benchPortNm +
		` cluster IP"? .*-j (` + v.prefix + `SVC-\S+)`)
	for _, save := range cands {
		out, err := v.l.Exec(ctx, v.l.NodeNS, save, "-t", "nat")
		if err != nil {
			continue
		}
		m := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if s := re.FindStringSubmatch(sc.Text()); s != nil {
				m[s[1]] = s[2]
			}
		}
		if len(m) > 0 {
			v.save = save
			v.list = strings.TrimSuffix(save, "-save")
			return m, nil
		}
	}
	return map[string]string{}, nil
}

func (v *iptView) programmed(ctx context.Context, ips map[[4]byte]bool) (int, error) {
	m, err := v.services(ctx)
	return len(m), err
}

func (v *iptView) ports(ctx context.Context) (map[string]portRef, error) {
	m, err := v.services(ctx)
	out := make(map[string]portRef, len(m))
	for name, chain := range m {
		out[name] = portRef{chain: chain}
	}
	return out, err
}

func (v *iptView) endpoints(ctx context.Context, p portRef) (int, error) {
	list := v.list
	if list == "" {
		list = "iptables"
	}
	out, err := v.l.Exec(ctx, v.l.NodeNS, list, "-w", "-t", "nat", "-S", p.chain)
	if err != nil {
		return -1, err
	}
	// An endpoint is a jump to its chain, or (proxyd, an endpoint on
	// another node) a DNAT in the service chain itself.
	return strings.Count(out, "-j "+v.prefix+"SEP-") + strings.Count(out, "-j DNAT "), nil
}

// nftActivity counts nf_tables transactions (generations) and the objects
// they carried (rules, chains, sets, elements) while it runs: a write
// counter that works for every contender using nf_tables, iptables-nft
// included.
type nftActivity struct {
	mon     *nftables.Monitor
	nsFile  *os.File
	done    chan struct{}
	gens    int
	objects int
	err     error
}

func startActivity(ns string) (*nftActivity, error) {
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, err
	}
	// A full iptables-nft-restore or nft -f at idle can be thousands of
	// events at once: give the monitor socket room (root may exceed rmem_max).
	bigRcv := func(nc *netlink.Conn) error {
		raw, err := nc.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 256<<20)
		}); err != nil {
			return err
		}
		return serr
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.WithSockOptions(bigRcv))
	if err != nil {
		f.Close()
		return nil, err
	}
	a := &nftActivity{mon: nftables.NewMonitor(nftables.WithMonitorEventBuffer(1024)), nsFile: f, done: make(chan struct{})}
	ch, err := c.AddGenerationalMonitor(a.mon)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nftables monitor: %w", err)
	}
	go func() {
		defer close(a.done)
		for evs := range ch {
			if evs.GeneratedBy != nil && evs.GeneratedBy.Type == nftables.MonitorEventTypeOOB {
				a.err = evs.GeneratedBy.Error
				continue
			}
			a.gens++
			a.objects += len(evs.Changes)
		}
	}()
	return a, nil
}

// stop ends the monitor and returns the counts.
func (a *nftActivity) stop() (gens, objects int, err error) {
	_ = a.mon.Close()
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		err = fmt.Errorf("nftables monitor did not stop")
	}
	a.nsFile.Close()
	if err == nil {
		err = a.err
	}
	return a.gens, a.objects, err
}

// snapshot is the node netns's rules as text, to prove contenders leave
// nothing behind.
func snapshot(ctx context.Context, l *lab.Lab) (map[string]string, error) {
	out := map[string]string{}
	for _, argv := range [][]string{{"nft", "list", "ruleset"}, {"iptables-save"}, {"iptables-legacy-save"}} {
		s, err := l.Exec(ctx, l.NodeNS, argv...)
		if err != nil {
			return nil, err
		}
		out[argv[0]] = normalizeSave(s)
	}
	return out, nil
}

// normalizeSave keeps only what a proxy adds: rules, user chains, sets and
// maps. Comment lines, counters, table headers and empty built-in chains
// (which iptables creates just by looking at a table) are dropped, in both
// iptables-save and nft list ruleset output.
func normalizeSave(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "", t == "}", t == "COMMIT", strings.HasPrefix(t, "#"), strings.HasPrefix(t, "*"),
			strings.HasPrefix(t, "table "), builtinChain.MatchString(t), builtinHook.MatchString(t):
			continue
		}
		if strings.HasPrefix(t, ":") {
			if i := strings.LastIndex(t, " ["); i > 0 {
				t = t[:i]
			}
		}
		keep = append(keep, t)
	}
	return strings.Join(keep, "\n")
}

var (
	builtinChain = regexp.MustCompile(`^(:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT|chain (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) \{)`)
	builtinHook  = regexp.MustCompile(`^type \S+ hook \S+ priority \S+; policy accept;$`)
)

// diffSnapshots says which tool shows lines that the baseline lacks.
func diffSnapshots(base, now map[string]string) string {
	var out []string
	for tool, s := range now {
		if s == base[tool] {
			continue
		}
		baseLines := map[string]bool{}
		for _, l := range strings.Split(base[tool], "\n") {
			baseLines[l] = true
		}
		var extra []string
		for _, l := range strings.Split(s, "\n") {
			if !baseLines[l] {
				extra = append(extra, l)
			}
		}
		if len(extra) == 0 {
			continue
		}
		sample := extra
		if len(sample) > 3 {
			sample = sample[:3]
		}
		out = append(out, fmt.Sprintf("%s: %d extra lines (%s)", tool, len(extra), strings.Join(sample, " | ")))
	}
	return strings.Join(out, "; ")
}
