package healthcheck

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
)

func loopback(port uint16) (net.Listener, error) {
	return net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
}

func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func get(t *testing.T, port uint16) (int, string, error) {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

var web = model.NamespacedName{Namespace: "default", Name: "web"}

func TestAnswersLikeKubeProxy(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := NewWithListener(loopback, healthy.Load)
	defer s.Close()
	port := freePort(t)

	s.Sync(map[model.NamespacedName]model.HealthCheck{web: {Port: port, LocalEndpoints: 2}})
	code, body, err := get(t, port)
	want := "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
	if err != nil || code != http.StatusOK || body != want {
		t.Fatalf("with 2 local endpoints: %d %v\n%s\nwant 200\n%s", code, err, body, want)
	}

	healthy.Store(false)
	if code, body, _ := get(t, port); code != http.StatusServiceUnavailable {
		t.Errorf("proxy unhealthy: %d %s, want 503", code, body)
	}
	healthy.Store(true)

	s.Sync(map[model.NamespacedName]model.HealthCheck{web: {Port: port, LocalEndpoints: 0}})
	if code, body, _ := get(t, port); code != http.StatusServiceUnavailable {
		t.Errorf("no local endpoints: %d %s, want 503", code, body)
	}
}

func TestListenersFollowTheServices(t *testing.T) {
	s := NewWithListener(loopback, func() bool { return true })
	defer s.Close()
	first, second := freePort(t), freePort(t)

	s.Sync(map[model.NamespacedName]model.HealthCheck{web: {Port: first, LocalEndpoints: 1}})
	if code, _, err := get(t, first); err != nil || code != http.StatusOK {
		t.Fatalf("opened: %d %v", code, err)
	}
	s.Sync(map[model.NamespacedName]model.HealthCheck{web: {Port: second, LocalEndpoints: 1}})
	if _, _, err := get(t, first); err == nil {
		t.Errorf("the old port still answers after the health check moved")
	}
	if code, _, err := get(t, second); err != nil || code != http.StatusOK {
		t.Errorf("new port: %d %v", code, err)
	}
	s.Sync(nil)
	if _, _, err := get(t, second); err == nil {
		t.Errorf("the port still answers after the Service lost its health check")
	}
}

func TestATakenPortIsRetriedOnTheNextSync(t *testing.T) {
	s := NewWithListener(loopback, func() bool { return true })
	defer s.Close()
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(squatter.Addr().(*net.TCPAddr).Port)
	checks := map[model.NamespacedName]model.HealthCheck{web: {Port: port, LocalEndpoints: 1}}

	s.Sync(checks)
	if len(s.services) != 0 {
		t.Fatalf("a taken port counts as open")
	}
	squatter.Close()
	s.Sync(checks)
	if code, _, err := get(t, port); err != nil || code != http.StatusOK {
		t.Errorf("after the port was freed: %d %v", code, err)
	}
}

func TestUpdateFollowsTheChangedServicesOnly(t *testing.T) {
	s := NewWithListener(loopback, func() bool { return true })
	defer s.Close()
	port := freePort(t)
	svc := &model.Service{Namespace: "default", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
		ExternalLocal: true, HealthCheckNodePort: port, Ports: []model.ServicePortSpec{{Name: "http", Protocol: model.TCP, Port: 80}}}
	snap := model.Snapshot{Services: map[model.NamespacedName]*model.Service{web: svc}}
	st := model.Build(snap)
	key := model.ServicePortKey{Namespace: "default", Name: "web", Port: "http", Protocol: model.TCP}

	s.Update(st, []model.ServicePortKey{key})
	if code, _, err := get(t, port); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("after the first update: %d %v, want 503 (no local endpoint)", code, err)
	}
	s.Update(&model.State{}, nil)
	if code, _, err := get(t, port); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("an update that changed nothing closed the health check: %d %v", code, err)
	}
	s.Update(&model.State{}, []model.ServicePortKey{key})
	if _, _, err := get(t, port); err == nil {
		t.Errorf("the port still answers after the Service's port was removed")
	}
}
