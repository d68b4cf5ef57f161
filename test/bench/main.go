// Command bench measures proxyd against upstream kube-proxy in the e2e lab
// (a real etcd + kube-apiserver, a node netns, echo Pods):
//
//	go run ./test/bench -n 1000,10000 -out docs/bench
//	go run ./test/bench -n 5000 -pods 50 -sync-cap 20m   # kubernetes#135639
//	go run ./test/bench -smoke          # CI: N=1000, K=50; fails only on harness errors
//
// For each N it creates N selector-less Services with one EndpointSlice of
// one endpoint per lab Pod (-pods), then runs each contender in turn in the node
// netns, cleaning the netns (and checking it is clean) between them:
// full-sync time, network programming latency over K single-endpoint
// changes, memory, connect latency to the VIPs, and idle-resync cost. It
// prints a table with proxyd/kube-proxy ratios and writes
// results-<N>.csv (results-<N>x<pods>.csv unless -pods is 10), SVG and PNG
// plots, targets.md and README.md into -out; with -readme, the generated
// targets section of that file too. A contender whose full sync has not
// finished after -sync-cap is stopped and reported as "> cap", which is a
// result, not a failure.
//
// It needs root, the upstream binaries ($PROXYD_LAB_BIN, as `make tools`
// builds them) and bin/proxyd ($PROXYD_BIN).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	if err := run(); err != nil {
		log.Printf("bench: harness error: %v", err)
		os.Exit(1)
	}
}

// flagSet says whether the named flag was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func defaultProxyd() string {
	if v := os.Getenv("PROXYD_BIN"); v != "" {
		return v
	}
	return "bin/proxyd"
}

func run() error {
	var (
		nList       = flag.String("n", "1000", "comma-separated Service counts")
		k           = flag.Int("k", 200, "single-endpoint changes timed per contender")
		connects    = flag.Int("connects", 1000, "TCP connects to VIPs timed per contender")
		out         = flag.String("out", "docs/bench", "directory for results-<N>.csv, plots and README.md")
		smoke       = flag.Bool("smoke", false, "CI smoke run: N=1000, K=50, 300 connects; exit non-zero only on harness errors")
		contenders  = flag.String("contenders", strings.Join(allContenders, ","), "contenders to run, in order")
		proxydBin   = flag.String("proxyd", defaultProxyd(), "proxyd binary")
		labBin      = flag.String("lab-bin", lab.DefaultBinDir(), "directory with etcd, kube-apiserver, kubectl, kube-proxy")
		pods        = flag.Int("pods", 10, "echo Pods = endpoints per Service")
		workers     = flag.Int("workers", 64, "concurrent API writers when creating the workload")
		syncCap     = flag.Duration("sync-cap", 20*time.Minute, "stop a contender whose full sync has not finished after this; its row reports \"> cap\" (-smoke: 3m)")
		syncTimeout = flag.Duration("sync-timeout", 0, "timeout of the restarted contender's first sync; default 120s + 60ms*N*pods/10")
		chTimeout   = flag.Duration("change-timeout", 0, "per-change timeout; default 30s + 5ms*N")
		idlePeriod  = flag.Duration("idle-period", 2*time.Second, "--sync-period of the idle phase")
		idleN       = flag.Int("idle-periods", 5, "sync periods measured in the idle phase")
		total       = flag.Duration("timeout", 90*time.Minute, "give up on the whole run after this")
		reportOnly  = flag.Bool("report-only", false, "only redraw the plots, targets.md and README.md from the CSVs in -out")
		readmePath  = flag.String("readme", "", "also regenerate the targets table between the markers in this file (the repository's README.md)")
		note        = flag.String("note", "", "free text recorded with the results (e.g. how the binaries were built)")
		heapDir     = flag.String("heap-profiles", "", "directory for proxyd's heap profile at steady state (runs proxyd with --profiling)")
	)
	flag.Parse()
	if *reportOnly {
		return writeReport(*out, *readmePath)
	}
	if *smoke {
		*nList, *k, *connects = "1000", 50, 300
		if !flagSet("sync-cap") {
			*syncCap = 3 * time.Minute
		}
	}
	if *syncCap <= 0 {
		return fmt.Errorf("-sync-cap %v: want a positive duration", *syncCap)
	}
	var ns []int
	for _, s := range strings.Split(*nList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-n %q: want positive integers", *nList)
		}
		ns = append(ns, n)
	}
	if *labBin == "" {
		return errors.New("no upstream binaries: set PROXYD_LAB_BIN or -lab-bin (make tools builds them)")
	}
	pb, err := filepath.Abs(*proxydBin)
	if err != nil {
		return err
	}
	var cs []contender
	for _, name := range strings.Split(*contenders, ",") {
		c, err := newContender(strings.TrimSpace(name), pb, filepath.Join(*labBin, "kube-proxy"))
		if err != nil {
			return err
		}
		if _, err := os.Stat(c.bin); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		c.profiling = *heapDir != "" && c.proxydV
		cs = append(cs, c)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *total)
	defer cancel()

	cmdline := "go run ./test/bench " + strings.Join(os.Args[1:], " ")
	for _, n := range ns {
		key := rowKey{n: n, pods: *pods}
		p := params{n: n, k: *k, connects: *connects, syncCap: *syncCap, syncTimeout: *syncTimeout, changeTimeout: *chTimeout,
			idlePeriod: *idlePeriod, idlePeriods: *idleN, heapDir: *heapDir, logf: log.Printf}
		if p.syncTimeout == 0 {
			p.syncTimeout = 120*time.Second + time.Duration(n**pods/10)*60*time.Millisecond
		}
		if p.changeTimeout == 0 {
			p.changeTimeout = 30*time.Second + time.Duration(n)*5*time.Millisecond
		}
		begin := time.Now()
		rs, env, err := runN(ctx, *labBin, *pods, *workers, cs, p)
		if err != nil {
			return fmt.Errorf("at %s: %w", key.label(), err)
		}
		env.wall = time.Since(begin)
		env.cmdline = cmdline
		env.note = *note
		fmt.Print(table(key, rs, env))
		if err := writeCSV(filepath.Join(*out, key.csvName()), rs, env); err != nil {
			return err
		}
		if err := writeReport(*out, *readmePath); err != nil {
			return err
		}
		log.Printf("%s done in %v; wrote %s", key.label(), env.wall.Round(time.Second), *out)
	}
	return nil
}

// runEnv describes the run for the report.
type runEnv struct {
	n, k, connects, pods int
	syncCap              time.Duration
	idlePeriod           time.Duration
	idlePeriods          int
	createS              float64 // workload creation seconds
	directP50, directP99 float64 // connect straight to a Pod, ms
	labStartS            float64
	wall                 time.Duration
	cmdline, note        string
	when                 time.Time
}

// runN runs every contender at one N in one lab.
func runN(ctx context.Context, labBin string, pods, workers int, cs []contender, p params) ([]*result, runEnv, error) {
	env := runEnv{n: p.n, k: p.k, connects: p.connects, pods: pods, syncCap: p.syncCap,
		idlePeriod: p.idlePeriod, idlePeriods: p.idlePeriods, when: time.Now().UTC()}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	l, err := lab.Start(sctx, lab.Config{Logf: log.Printf, BinDir: labBin, Pods: pods})
	cancel()
	if err != nil {
		return nil, env, err
	}
	defer func() {
		if err := l.Close(); err != nil {
			log.Printf("lab close: %v", err)
		}
	}()
	env.labStartS = l.StartDuration.Seconds()
	cfg, err := l.RESTConfig()
	if err != nil {
		return nil, env, err
	}
	cfg.QPS, cfg.Burst = -1, 0 // no client-side throttling
	cfg.Timeout = 60 * time.Second
	clients, err := newClientset(cfg)
	if err != nil {
		return nil, env, err
	}
	log.Printf("creating %d Services x %d endpoints with %d writers", p.n, pods, workers)
	w, err := createWorkload(ctx, clients, l, p.n, workers)
	if err != nil {
		return nil, env, err
	}
	env.createS = w.create.Seconds()
	log.Printf("workload created in %.1fs", env.createS)

	podAddrs := make([]string, 0, len(l.Pods))
	for _, pod := range l.Pods {
		podAddrs = append(podAddrs, fmt.Sprintf("%s:%d", pod.IP, lab.EchoPort))
	}
	d, fails, err := connectLatency(l.ClientNS, podAddrs, p.connects)
	if err != nil {
		return nil, env, err
	}
	if fails > 0 {
		return nil, env, fmt.Errorf("%d of %d direct connects to Pods failed: the lab network is broken", fails, p.connects)
	}
	env.directP50, env.directP99 = ms(percentile(d, 50)), ms(percentile(d, 99))
	log.Printf("direct Pod connects (no proxy): p50 %.3f ms p99 %.3f ms", env.directP50, env.directP99)

	base, err := snapshot(ctx, l)
	if err != nil {
		return nil, env, err
	}
	var rs []*result
	for _, c := range cs {
		log.Printf("=== %s at %s", c.name, rowKey{n: p.n, pods: pods}.label())
		r, err := runContender(ctx, l, c, w, p, base)
		if err != nil {
			return nil, env, fmt.Errorf("contender %s: %w", c.name, err)
		}
		if r.status != "ok" {
			log.Printf("%s: %s", c.name, r.status)
		}
		rs = append(rs, r)
	}
	return rs, env, nil
}
