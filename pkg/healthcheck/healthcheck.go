// Package healthcheck serves the health check node port of every
// LoadBalancer Service with externalTrafficPolicy Local, as kube-proxy does:
// a load balancer probes each node there and sends traffic only to nodes
// that answer 200, which are those with a ready endpoint of their own.
package healthcheck

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/proxyd/proxyd/pkg/model"
)

// Server owns one HTTP listener per health-checked Service.
type Server struct {
	listen  func(port uint16) (net.Listener, error)
	healthy func() bool

	mu       sync.RWMutex
	services map[model.NamespacedName]*instance

	// want are the health checks Update keeps; only its caller uses it.
	want map[model.NamespacedName]model.HealthCheck
}

type instance struct {
	port      uint16
	server    *http.Server
	endpoints int
}

// New returns a Server that listens on every address of the node and
// reports the proxy unhealthy whenever healthy says so.
func New(healthy func() bool) *Server {
	return NewWithListener(func(port uint16) (net.Listener, error) {
		return net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(int(port))))
	}, healthy)
}

// NewWithListener is New with the listening left to listen, for tests.
func NewWithListener(listen func(port uint16) (net.Listener, error), healthy func() bool) *Server {
	return &Server{listen: listen, healthy: healthy, services: map[model.NamespacedName]*instance{}}
}

// Update is Sync after a sync that changed the ports changed of st: the
// health checks of their Services are recomputed from st, the others kept
// from earlier calls, so a sync pays for what it changed.
func (s *Server) Update(st *model.State, changed []model.ServicePortKey) {
	if s.want == nil {
		s.want = map[model.NamespacedName]model.HealthCheck{}
	}
	for _, k := range changed {
		n := k.Service()
		if hc, ok := st.HealthCheckOf(n); ok {
			s.want[n] = hc
		} else {
			delete(s.want, n)
		}
	}
	s.Sync(s.want)
}

// Sync makes the listeners match checks: it closes those of Services that
// no longer have a health check (or moved port), opens the missing ones
// and updates every count. A port that cannot be opened is logged and
// tried again on the next Sync.
func (s *Server) Sync(checks map[model.NamespacedName]model.HealthCheck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, in := range s.services {
		if hc, ok := checks[name]; !ok || hc.Port != in.port {
			klog.V(2).InfoS("Closing health check", "service", name, "port", in.port)
			_ = in.server.Close()
			delete(s.services, name)
		}
	}
	for name, hc := range checks {
		if in := s.services[name]; in != nil {
			in.endpoints = hc.LocalEndpoints
			continue
		}
		l, err := s.listen(hc.Port)
		if err != nil {
			klog.ErrorS(err, "Could not open the health check node port; load balancers will see this node as down", "service", name, "port", hc.Port)
			continue
		}
		in := &instance{port: hc.Port, endpoints: hc.LocalEndpoints}
		in.server = &http.Server{Handler: s.handler(name), ReadHeaderTimeout: 10 * time.Second}
		s.services[name] = in
		klog.V(2).InfoS("Opened health check", "service", name, "port", hc.Port)
		go func() {
			if err := in.server.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "Health check server stopped", "service", name, "port", hc.Port)
			}
		}()
	}
}

// Close closes every listener.
func (s *Server) Close() { s.Sync(nil) }

// report is kube-proxy's response body, field for field.
type report struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (s *Server) handler(name model.NamespacedName) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.RLock()
		in := s.services[name]
		count := 0
		if in != nil {
			count = in.endpoints
		}
		s.mu.RUnlock()
		var r report
		r.Service.Namespace, r.Service.Name = name.Namespace, name.Name
		r.LocalEndpoints, r.ServiceProxyHealthy = count, s.healthy()
		body, _ := json.MarshalIndent(r, "", "\t")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if count == 0 || !r.ServiceProxyHealthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		} else {
			w.WriteHeader(http.StatusOK)
		}
		_, _ = w.Write(body)
	})
}
