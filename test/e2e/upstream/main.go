// Command upstream runs the upstream Kubernetes e2e suite's Service-proxy
// tests (see selection.go) against a test/e2e/cluster lab once per
// contender — proxyd and upstream kube-proxy, each mode — and writes the
// side-by-side table (README.md, results.csv) from the runs' records.
//
//	go run ./test/e2e/upstream -contenders proxyd-nftables,kube-proxy-nftables -out docs/e2e
//	go run ./test/e2e/upstream -report -out docs/e2e       # table from the records only
//	go run ./test/e2e/upstream -hold /tmp/hold -contenders proxyd-nftables   # a cluster to poke at
//	go run ./test/e2e/upstream -contenders proxyd-nftables -repeat proxyd-nftables=3   # the flake check
//
// Each run gets a fresh cluster (no rules of an earlier contender left
// behind), imports the images hack/image built, deploys the contender as a
// DaemonSet, runs e2e.test through the ginkgo CLI inside the control plane's
// network namespace and stores the JUnit result as out/runs/NAME.json.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/proxyd/proxyd/test/e2e/cluster"
)

type options struct {
	contenders []string
	repeat     map[string]int // runs per contender (default 1)
	check      bool
	nodes      int
	procs      int
	focus      string
	skip       string
	out        string
	images     string
	toolsBin   string
	e2eBin     string
	repo       string
	hold       string
	report     bool
	timeout    time.Duration
	tag        string
}

func main() {
	var o options
	var contenders string
	flag.StringVar(&contenders, "contenders", "proxyd-nftables,proxyd-iptables,proxyd-ipvs,kube-proxy-nftables,kube-proxy-iptables", "comma-separated contenders")
	var repeat string
	flag.StringVar(&repeat, "repeat", "", "contender=N,…: run these N times (the flake check: proxyd-nftables=3)")
	flag.BoolVar(&o.check, "check", false, "exit 1 unless every run passed at least one test and failed none (CI)")
	flag.IntVar(&o.nodes, "nodes", 6, "kubelet nodes (6: the Traffic Distribution tests want 3 zones of 2 nodes)")
	flag.IntVar(&o.procs, "procs", 4, "ginkgo parallel processes")
	flag.StringVar(&o.focus, "focus", focusRegexp(), "ginkgo --focus")
	flag.StringVar(&o.skip, "skip", skipRegexp(), "ginkgo --skip")
	flag.StringVar(&o.out, "out", "docs/e2e", "where README.md, results.csv and runs/ go")
	flag.StringVar(&o.images, "images", "bin/images", "directory of the image tarballs (make images e2e-images)")
	flag.StringVar(&o.toolsBin, "tools", os.Getenv("PROXYD_LAB_BIN"), "directory of the control plane and node binaries")
	flag.StringVar(&o.e2eBin, "e2e", os.Getenv("PROXYD_E2E_BIN"), "directory of e2e.test and ginkgo")
	flag.StringVar(&o.repo, "repo", ".", "the proxyd checkout (deploy/daemonset.yaml)")
	flag.StringVar(&o.hold, "hold", "", "bring the cluster up with the first contender and keep it while this file exists")
	flag.BoolVar(&o.report, "report", false, "only write the table from out/runs")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Hour, "suite timeout per run")
	flag.StringVar(&o.tag, "tag", "", "suffix of the run records' names (default: the run number of a repeated contender)")
	flag.Parse()
	o.contenders = strings.Split(contenders, ",")
	o.repeat = map[string]int{}
	for _, kv := range strings.Split(repeat, ",") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			log.Fatalf("upstream: -repeat %q: want contender=N", kv)
		}
		o.repeat[k] = n
	}
	if err := run(o); err != nil {
		log.Fatalf("upstream: %v", err)
	}
}

func run(o options) error {
	if o.report {
		return writeReport(o.out)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, kubelets)")
	}
	var failed []string
	for _, name := range o.contenders {
		ct, err := cluster.ContenderByName(name)
		if err != nil {
			return err
		}
		runs := max(o.repeat[name], 1)
		for i := 1; i <= runs; i++ {
			tag := o.tag
			if runs > 1 {
				tag = strings.TrimPrefix(tag+"-"+strconv.Itoa(i), "-")
			}
			rec, err := runOne(o, ct, tag)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if p, f, _ := rec.counts(); o.check && (f > 0 || p == 0) {
				failed = append(failed, fmt.Sprintf("%s: %d passed, %d failed", rec.Name(), p, f))
			}
			if o.hold != "" {
				return nil
			}
		}
	}
	if err := writeReport(o.out); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("-check: %s", strings.Join(failed, "; "))
	}
	return nil
}

// images lists the tarballs in dir.
func images(dir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(dir, "*.tar"))
	if err != nil || len(m) == 0 {
		return nil, fmt.Errorf("no image tarballs in %s (make images e2e-images)", dir)
	}
	return m, nil
}

// runOne brings a cluster up with ct, runs the suite and stores the record.
func runOne(o options, ct cluster.Contender, tag string) (rec Run, err error) {
	ctx := context.Background()
	tars, err := images(o.images)
	if err != nil {
		return rec, err
	}
	rec = Run{Contender: ct.Name, Tag: tag, Date: time.Now().UTC().Format(time.RFC3339), Machine: machine(),
		Nodes: o.nodes, Procs: o.procs, Focus: o.focus, Skip: o.skip}
	if why := cannotRun(ct); why != "" {
		rec.NotRun = why
		log.Printf("upstream: %s cannot run here: %s", ct.Name, why)
		return rec, saveRun(o.out, rec.Name(), rec)
	}
	t0 := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{Nodes: o.nodes, BinDir: o.toolsBin, Images: tars})
	if err != nil {
		return rec, err
	}
	defer func() {
		t := time.Now()
		if err := c.Close(); err != nil {
			log.Printf("upstream: teardown: %v", err)
		}
		log.Printf("upstream: cluster torn down in %.1fs", time.Since(t).Seconds())
	}()
	rec.Wall.ClusterUp = time.Since(t0).Seconds()
	t1 := time.Now()
	if err := c.Deploy(ctx, ct, o.repo); err != nil {
		return rec, err
	}
	if err := c.DeployCoreDNS(ctx, CoreDNSImage); err != nil {
		return rec, err
	}
	rec.Wall.Deploy = time.Since(t1).Seconds()
	log.Printf("upstream: %s deployed on %d nodes (cluster %.0fs, deploy %.0fs)", ct.Name, o.nodes, rec.Wall.ClusterUp, rec.Wall.Deploy)
	if o.hold != "" {
		log.Printf("upstream: holding cluster %s (dir %s; kubectl: ip netns exec %s %s/kubectl --kubeconfig %s) while %s exists",
			c.Lab.ID, c.Lab.Dir, c.Lab.NodeNS, o.toolsBin, c.Lab.AdminKubeconfig, o.hold)
		for {
			if _, err := os.Stat(o.hold); err != nil {
				return rec, nil
			}
			time.Sleep(time.Second)
		}
	}
	name := ct.Name
	if tag != "" {
		name += "-" + tag
	}
	reportDir := filepath.Join(c.Lab.Dir, "e2e-report")
	t2 := time.Now()
	suiteErr := suite(ctx, o, c, reportDir)
	rec.Wall.Suite = time.Since(t2).Seconds()
	rec.Tests = map[string]Result{}
	for _, ph := range phases {
		tests, err := parseJUnit(filepath.Join(reportDir, "junit-"+ph.name+".xml"))
		if err != nil {
			return rec, fmt.Errorf("suite: %v; report: %w", suiteErr, err)
		}
		for name, r := range tests {
			// A test shows as skipped in the phase whose label filter
			// leaves it out: keep the other phase's outcome.
			if prev, ok := rec.Tests[name]; ok && r.State == "skipped" && (prev.State != "skipped" || prev.Message != "") {
				r = prev
			}
			rec.Tests[name] = r
		}
	}
	if rec.Excluded, err = listExcluded(o.e2eBin); err != nil {
		return rec, err
	}
	if err := saveRun(o.out, name, rec); err != nil {
		return rec, err
	}
	// Keep the full output next to the cache for whoever chases a failure.
	keep := filepath.Join(os.TempDir(), "pxd-e2e-upstream", name)
	_ = os.RemoveAll(keep)
	_ = os.MkdirAll(filepath.Dir(keep), 0o755)
	_ = exec.Command("cp", "-a", reportDir, keep).Run()
	p, f, s := rec.counts()
	log.Printf("upstream: %s: %d passed, %d failed, %d skipped in %.0fs (output in %s)", name, p, f, s, rec.Wall.Suite, keep)
	return rec, nil
}

// cannotRun says why ct cannot run on this machine's kernel, or "".
func cannotRun(ct cluster.Contender) string {
	if ct.Mode != "ipvs" {
		return ""
	}
	if _, err := os.Stat("/sys/module/ip_vs"); err == nil {
		return "" // built in or loaded
	}
	rel := kernelRelease()
	var found []string
	_ = filepath.WalkDir(filepath.Join("/lib/modules", rel), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), "ip_vs.ko") {
			found = append(found, p)
		}
		return nil
	})
	if len(found) > 0 {
		return "" // loadable; the proxy loads it
	}
	return fmt.Sprintf("this kernel (%s) has no ip_vs: not built in (no /sys/module/ip_vs) and no module under /lib/modules/%s. "+
		"The IPVS backend is tested in a qemu VM instead (make ipvs-vm)", rel, rel)
}

func kernelRelease() string {
	b, _ := exec.Command("uname", "-r").Output()
	return strings.TrimSpace(string(b))
}

// CoreDNSImage is the image hack/image makes of hack/coredns.
const CoreDNSImage = "proxyd.local/coredns:v1.15.0"

// phases run the selection in two ginkgo invocations: the tests that may
// share the cluster in parallel, then [Serial] and [Disruptive] ones (the
// latter delete the proxy's Pods) one at a time.
var phases = []struct{ name, labels string }{
	{"parallel", "!Serial && !Disruptive"},
	{"serial", "Serial || Disruptive"},
}

// suite runs the ginkgo CLI on e2e.test inside the control plane's network
// namespace, where the admin kubeconfig's 127.0.0.1:6443 is the apiserver,
// phase by phase, each writing junit-PHASE.xml into reportDir.
func suite(ctx context.Context, o options, c *cluster.Cluster, reportDir string) error {
	if err := os.MkdirAll(reportDir, 0o755); err != nil {
		return err
	}
	out, err := os.Create(filepath.Join(reportDir, "output.log"))
	if err != nil {
		return err
	}
	defer out.Close()
	var errs []error
	for _, ph := range phases {
		procs := o.procs
		if ph.name == "serial" {
			procs = 1
		}
		args := []string{"netns", "exec", c.Lab.NodeNS, filepath.Join(o.e2eBin, "ginkgo"),
			fmt.Sprintf("--procs=%d", procs),
			"--timeout=" + o.timeout.String(),
			"--no-color",
			"--focus=" + o.focus,
			"--skip=" + o.skip,
			"--label-filter=" + ph.labels,
			"--junit-report=junit-" + ph.name + ".xml",
			"--output-dir=" + reportDir,
			"--poll-progress-after=10m",
			filepath.Join(o.e2eBin, "e2e.test"), "--",
			"--kubeconfig=" + c.Lab.AdminKubeconfig,
			"--kubectl-path=" + filepath.Join(o.toolsBin, "kubectl"),
			"--provider=local",
			// Tests that count nodes read this, not the apiserver.
			fmt.Sprintf("--num-nodes=%d", len(c.Nodes)),
			"--report-dir=" + filepath.Join(reportDir, ph.name),
			"--disable-log-dump",
			"--dump-logs-on-failure=false",
		}
		cmd := exec.CommandContext(ctx, "ip", args...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.Dir = reportDir
		cmd.Env = append(os.Environ(), "HOME="+reportDir)
		fmt.Fprintf(out, "+ ip %s\n", strings.Join(args, " "))
		t0 := time.Now()
		err := cmd.Run()
		log.Printf("upstream: phase %s done in %.0fs (%v)", ph.name, time.Since(t0).Seconds(), err)
		if err != nil {
			errs = append(errs, fmt.Errorf("phase %s: %w", ph.name, err))
		}
	}
	return errors.Join(errs...)
}

// listExcluded lists the tests of the focus that the skip patterns leave
// out, from e2e.test --list-tests (which needs no cluster).
func listExcluded(e2eBin string) (map[string]string, error) {
	b, err := exec.Command(filepath.Join(e2eBin, "e2e.test"), "--list-tests").Output()
	if err != nil {
		return nil, fmt.Errorf("e2e.test --list-tests: %w", err)
	}
	ex := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		_, name, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		if in, why := selected(name); in && why != "" {
			ex[name] = why
		}
	}
	return ex, nil
}
