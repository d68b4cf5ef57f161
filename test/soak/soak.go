package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/proxyd/proxyd/cmd/proxyd/app"
	"github.com/proxyd/proxyd/pkg/explain"
	"github.com/proxyd/proxyd/pkg/informer"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/test/e2e/lab"
)

// sample is one row of <label>.csv.
type sample struct {
	at                      time.Duration
	rssMB                   float64
	goroutines              float64
	probes, failed, churned int
	syncs, driftRepairs     float64
}

// result is what a soak saw.
type result struct {
	start                time.Time
	ran                  time.Duration
	samples              []sample
	probes, failed       int
	failSamples          []string
	churn                *churner
	proxydExited         string
	drift                []string
	driftChecked         bool
	controlDiffs         int // differences the control comparison found
	services, servicePts int
}

// soak starts proxyd in l, runs churn, probes and samples for o.duration,
// then compares the kernel with the model.
func soak(ctx context.Context, l *lab.Lab, o options) (*result, error) {
	cfg, err := l.RESTConfig()
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = -1, 0
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: soakNS}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", soakNS, err)
	}
	var pods []string
	for _, p := range l.Pods {
		pods = append(pods, p.IP)
	}
	steady, err := cs.CoreV1().Services(soakNS).Create(ctx, service("steady", 80), metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create the untouched Service: %w", err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(soakNS).Create(ctx, slice("steady", pods, func(int) bool { return true }), metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create the untouched Service's slice: %w", err)
	}
	vip := net.JoinHostPort(steady.Spec.ClusterIP, "80")

	argv := []string{o.proxyd, "--mode=nftables", "--kubeconfig=" + l.ProxyKubeconfig, "--hostname-override=" + l.NodeName,
		"--cluster-cidr=" + lab.ClusterCIDRs, "--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256"}
	opts, err := app.Parse(argv[1:])
	if err != nil {
		return nil, fmt.Errorf("proxyd's flags: %w", err)
	}
	px, err := l.StartProcess(l.NodeNS, "proxyd.log", argv...)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := px.Stop(syscall.SIGTERM, 15*time.Second); err != nil {
			log.Printf("stop proxyd: %v", err)
		}
	}()
	log.Printf("proxyd (pid %d) started; waiting for %s (the untouched Service) to answer", px.PID(), vip)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := probe(ctx, l, vip); err == nil {
			break
		} else if time.Now().After(deadline) || px.Exited() {
			return nil, fmt.Errorf("the untouched Service %s never answered: %v (proxyd log %s)", vip, err, px.Log)
		}
		time.Sleep(200 * time.Millisecond)
	}

	res := &result{start: time.Now().UTC()}
	runCtx, stopRun := context.WithTimeout(ctx, o.duration)
	defer stopRun()
	var wg sync.WaitGroup
	var mu sync.Mutex // guards res.probes, res.failed, res.failSamples
	wg.Add(2)
	var churned atomic.Int64 // progress for the log; the counters come at the end
	go func() {
		defer wg.Done()
		res.churn = churn(runCtx, cs, pods, o.pool, 4, o.rate, &churned)
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(o.probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-tick.C:
			}
			// A probe is not cut short when the run ends: it gets its second.
			err := probe(ctx, l, vip)
			mu.Lock()
			res.probes++
			if err != nil {
				res.failed++
				if len(res.failSamples) < 10 {
					res.failSamples = append(res.failSamples, fmt.Sprintf("%s: %v", time.Since(res.start).Round(time.Millisecond), err))
				}
			}
			mu.Unlock()
		}
	}()
	begin := time.Now()
	tick := time.NewTicker(o.sample)
	for done := false; !done; {
		select {
		case <-runCtx.Done():
			done = true
		case <-tick.C:
		}
		mu.Lock()
		s := sample{at: time.Since(begin), probes: res.probes, failed: res.failed, churned: int(churned.Load())}
		mu.Unlock()
		if err := measure(ctx, l, px.PID(), &s); err != nil {
			log.Printf("sample: %v", err)
		}
		res.samples = append(res.samples, s)
		log.Printf("%6s  rss %.1f MB  goroutines %.0f  probes %d (failed %d)  churn writes %d  syncs %.0f  drift repairs %.0f",
			s.at.Round(time.Second), s.rssMB, s.goroutines, s.probes, s.failed, s.churned, s.syncs, s.driftRepairs)
		if px.Exited() {
			res.proxydExited = fmt.Sprintf("%v", px.Err())
			stopRun()
			done = true
		}
	}
	tick.Stop()
	wg.Wait()
	res.ran = time.Since(begin)
	if res.proxydExited != "" {
		return res, fmt.Errorf("proxyd exited during the soak: %s (log %s)", res.proxydExited, px.Log)
	}
	return res, res.checkModel(ctx, l, cs, opts)
}

// probe connects to addr from the client namespace and wants one echo
// answer within a second.
func probe(ctx context.Context, l *lab.Lab, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := lab.DialContext(l.ClientNS)(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	if !strings.HasPrefix(line, "pod") {
		return fmt.Errorf("answer %q is no Pod's", strings.TrimSpace(line))
	}
	return nil
}

var metricLine = regexp.MustCompile(`(?m)^(go_goroutines|kubeproxy_sync_proxy_rules_duration_seconds_count|proxyd_drift_repairs_total)(\{[^}]*\})? ([0-9.e+-]+)$`)

// measure fills s with proxyd's RSS (from /proc) and its goroutines, syncs
// and drift repairs (from its metrics).
func measure(ctx context.Context, l *lab.Lab, pid int, s *sample) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			s.rssMB = kb / 1024
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	code, body, err := l.HTTPGet(ctx, l.NodeNS, "http://127.0.0.1:10249/metrics")
	if err != nil || code != 200 {
		return fmt.Errorf("metrics: status %d: %v", code, err)
	}
	for _, m := range metricLine.FindAllStringSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(m[3], 64)
		switch m[1] {
		case "go_goroutines":
			s.goroutines = v
		case "kubeproxy_sync_proxy_rules_duration_seconds_count":
			s.syncs += v
		case "proxyd_drift_repairs_total":
			s.driftRepairs += v
		}
	}
	return nil
}

// checkModel waits for proxyd to settle, then compares the nftables tables
// of the node with those rendered from the API's objects (proxyd's own
// informer conversion and model, its flags' configuration), retrying for
// a while as proxyd may still be writing the last changes.
func (r *result) checkModel(ctx context.Context, l *lab.Lab, cs kubernetes.Interface, opts *app.Options) error {
	inf := informer.New(cs, informer.Options{NodeName: l.NodeName}, nopHandler{})
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	go inf.Run(ictx)
	if err := inf.WaitForSync(ictx); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	ns, err := os.Open("/run/netns/" + l.NodeNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	dp := &explain.NFTables{Config: opts.ProxierConfig(), NetNSFD: int(ns.Fd())}
	deadline := time.Now().Add(60 * time.Second)
	for {
		time.Sleep(2 * time.Second) // informer and proxyd catch up
		st := model.Build(inf.Snapshot())
		r.servicePts = len(st.Services)
		names := map[model.NamespacedName]bool{}
		for k := range st.Services {
			names[k.Service()] = true
		}
		r.services = len(names)
		r.drift, err = dp.Drift(ctx, st)
		if err != nil {
			return fmt.Errorf("compare kernel and model: %w", err)
		}
		r.driftChecked = true
		if len(r.drift) == 0 || time.Now().After(deadline) {
			log.Printf("kernel vs model: %d Services (%d service ports), %d differences", r.services, r.servicePts, len(r.drift))
			return r.control(ctx, dp, st)
		}
	}
}

// control checks that the comparison sees a difference: the kernel
// against the model without the untouched Service must differ.
func (r *result) control(ctx context.Context, dp *explain.NFTables, st *model.State) error {
	less := *st
	less.Services = maps.Clone(st.Services)
	n := len(less.Services)
	maps.DeleteFunc(less.Services, func(k model.ServicePortKey, _ *model.ServicePort) bool {
		return k.Service() == model.NamespacedName{Namespace: soakNS, Name: "steady"}
	})
	if len(less.Services) == n {
		return fmt.Errorf("control: the model has no Service %s/steady", soakNS)
	}
	d, err := dp.Drift(ctx, &less)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if len(d) == 0 {
		return errors.New("control: the kernel equals the model even without the untouched Service: the comparison sees nothing")
	}
	r.controlDiffs = len(d)
	return nil
}

type nopHandler struct{}

func (nopHandler) OnChange(string, time.Time) {}

// verdict is nil when the soak passed.
func (r *result) verdict() error {
	var bad []string
	if r.failed > 0 {
		bad = append(bad, fmt.Sprintf("%d of %d connections to the untouched Service failed", r.failed, r.probes))
	}
	if r.probes == 0 {
		bad = append(bad, "no connection was tried")
	}
	if len(r.drift) > 0 {
		bad = append(bad, fmt.Sprintf("the kernel differs from the model in %d ways", len(r.drift)))
	}
	if len(bad) > 0 {
		return fmt.Errorf("soak failed: %s", strings.Join(bad, "; "))
	}
	return nil
}
