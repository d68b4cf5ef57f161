package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/proxyd/proxyd/internal/nfacct"
	"github.com/proxyd/proxyd/pkg/conntrack"
	"github.com/proxyd/proxyd/pkg/healthcheck"
	"github.com/proxyd/proxyd/pkg/healthz"
	"github.com/proxyd/proxyd/pkg/informer"
	"github.com/proxyd/proxyd/pkg/metrics"
	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/iptables"
)

// Run is the daemon: it returns nil when ctx ends (SIGTERM), leaving the
// rules in place so traffic keeps flowing across a restart.
func Run(ctx context.Context, o *Options) error {
	nodeName, err := o.nodeName()
	if err != nil {
		return err
	}
	if err := tuneConntrack(o); err != nil {
		klog.ErrorS(err, "Could not set conntrack timeouts; the kernel's stay in force")
	}
	client, err := o.client()
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	nodeCIDRs, err := detectLocal(ctx, o, client, nodeName)
	if err != nil {
		return err
	}
	if nodeCIDRs != nil {
		go watchPodCIDRs(ctx, stop, client, nodeName, nodeCIDRs, 30*time.Second)
	}
	backend, err := newBackend(o, o.Mode)
	if err != nil {
		return err
	}
	if err := CleanupAll(ctx, o, o.Mode); err != nil {
		klog.ErrorS(err, "Could not remove rules left by another mode; they may shadow this mode's")
	}

	m := metrics.New(o.Mode)
	if o.Mode == "iptables" {
		m.CollectNFAcct(iptables.CounterLocalhostNodePorts, iptables.CounterInvalidDropped, func(name string) (uint64, error) {
			c, err := nfacct.Get(name)
			return c.Packets, err
		})
	}
	programmed := &lastState{}
	events := informer.NewEventRecorder(client, nodeName)
	collector, explainer, closeExplain := newDiagnostics(o, backend, events, programmed)
	defer closeExplain()
	if collector != nil {
		m.Registry.MustRegister(collector)
		go collector.Run(ctx)
	}
	health := healthz.New(clock.RealClock{}, 2*o.SyncPeriod)
	health.Observe(func(path string, code int) {
		counter := m.HealthzTotal
		if path == "/livez" {
			counter = m.LivezTotal
		}
		counter.WithLabelValues(strconv.Itoa(code)).Inc()
	})
	servers, err := serve(o, m, health, explainer)
	if err != nil {
		return err
	}
	defer func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}()

	checks := healthcheck.New(func() bool { ok, _ := health.Healthy(); return ok })
	defer checks.Close()
	cleaner, err := conntrack.New()
	if err != nil {
		klog.ErrorS(err, "Stale conntrack entries will not be cleared; they expire on their own")
	} else {
		defer cleaner.Close()
	}
	afterSync := func(s *model.State, d model.Diff) {
		if plan := conntrack.NewPlan(d, s); cleaner != nil && !plan.Empty() {
			for family, r := range cleaner.Clean(plan) {
				m.ConntrackDeleted.WithLabelValues(family.String()).Add(float64(r.Deleted))
				m.ConntrackDuration.WithLabelValues(family.String()).Observe(r.Took.Seconds())
			}
		}
		m.SetNoLocalEndpoints(s)
		programmed.set(s)
		if collector != nil {
			collector.Programmed(s, d)
		}
		checks.Sync(s.HealthChecks())
		health.SetNodeRetiring(s.Node.Retiring)
	}
	var inf *informer.Informer
	var builder model.Builder // only the runner's goroutine builds
	runner := proxier.NewRunner(backend, func() *model.State { return builder.Build(inf.Snapshot()) }, proxier.RunnerOptions{
		MinInterval: o.MinSyncPeriod, MaxInterval: o.SyncPeriod, Metrics: m, Health: health, AfterSync: afterSync,
	})
	inf = informer.New(client, informer.Options{NodeName: nodeName, ProxyName: o.ProxyName}, runner)
	events.Use(inf)
	klog.InfoS("Starting proxyd", "version", Version, "mode", o.Mode, "node", nodeName,
		"syncPeriod", o.SyncPeriod, "minSyncPeriod", o.MinSyncPeriod, "clusterCIDRs", o.ClusterCIDRs)
	health.QueuedUpdate()
	go inf.Run(ctx)

	// Never program before the first complete list: an empty State would
	// wipe rules that traffic depends on.
	for {
		waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := inf.WaitForSync(waitCtx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			klog.InfoS("Stopped before the first sync; existing rules left in place")
			if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		}
		klog.ErrorS(err, "Still waiting for the apiserver; existing rules are left in place", "server", client.host)
	}
	klog.InfoS("Informers synced; programming the kernel", "mode", o.Mode)
	runner.Run(ctx)
	klog.InfoS("Stopping; rules stay in place until the next proxyd takes over")
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func (o *Options) nodeName() (string, error) {
	if o.HostnameOverride != "" {
		return strings.ToLower(strings.TrimSpace(o.HostnameOverride)), nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name: %w (set --hostname-override)", err)
	}
	return strings.ToLower(h), nil
}

type apiClient struct {
	kubernetes.Interface
	host string
}

func (o *Options) client() (*apiClient, error) {
	var cfg *rest.Config
	var err error
	if o.Kubeconfig == "" && o.Master == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and not in a cluster: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags(o.Master, o.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", o.Kubeconfig, err)
		}
	}
	cfg.UserAgent = "proxyd/" + Version
	cfg.QPS, cfg.Burst = o.KubeAPIQPS, int(o.KubeAPIBurst)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apiserver client: %w", err)
	}
	return &apiClient{Interface: cs, host: cfg.Host}, nil
}

// serve starts the metrics and health endpoints; a port that is taken is
// an error at start, not a silent absence.
func serve(o *Options, m *metrics.Metrics, h *healthz.Health, explainer http.Handler) ([]*http.Server, error) {
	var servers []*http.Server
	start := func(addr string, handler http.Handler, what string) error {
		if addr == "" || strings.HasSuffix(addr, ":0") {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", what, addr, err)
		}
		s := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, s)
		go func() {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "HTTP server stopped", "what", what, "address", addr)
			}
		}()
		return nil
	}
	hh := h.Handler()
	if err := start(o.MetricsBindAddress, metricsHandler(o, m, hh, explainer), "metrics"); err != nil {
		return nil, err
	}
	if err := start(o.HealthzBindAddress, hh, "healthz"); err != nil {
		for _, s := range servers {
			_ = s.Close()
		}
		return nil, err
	}
	return servers, nil
}

// metricsHandler serves the metrics address as kube-proxy does: /metrics,
// /healthz and /livez, /proxyMode (the mode's name as plain text, which the
// upstream e2e suite reads to decide what to expect), and /debug/pprof with
// --profiling.
func metricsHandler(o *Options, m *metrics.Metrics, health, explainer http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	if o.Profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if explainer != nil {
		mux.Handle("/debug/explain", explainer)
	}
	mux.Handle("/healthz", health)
	mux.Handle("/livez", health)
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = io.WriteString(w, o.Mode)
	})
	return mux
}
