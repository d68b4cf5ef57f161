package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/proxyd/proxyd/internal/testenv"
	"github.com/proxyd/proxyd/internal/testns"
)

// The endpoint count the latency phase waits for, read from each shape of
// service port the contenders write: proxyd's service-ips element going to
// a shared pick chain (or to a chain of its own), kube-proxy's numgen over
// an anonymous verdict map, and proxyd's older numgen-guarded DNAT rules.
const shapes = `table ip proxyd {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.1 . tcp . 80 comment "default/bench-00001/tcp/http" : goto pick-tcp-3,
			     10.96.0.2 . tcp . 80 comment "default/bench-00002/tcp/http" : goto svc-default/bench-00002/tcp/http,
			     10.96.0.9 . tcp . 80 comment "default/other/tcp/http" : goto pick-tcp-3 }
	}
	map endpoints-tcp {
		typeof ip daddr . tcp dport . numgen random mod 65536 : ip daddr . tcp dport
		elements = { 10.96.0.1 . 80 . 0 : 10.244.1.11 . 8080,
			     10.96.0.1 . 80 . 1 : 10.244.1.12 . 8080,
			     10.96.0.1 . 80 . 2 : 10.244.1.13 . 8080 }
	}
	chain pick-tcp-3 {
		dnat ip to ip daddr . tcp dport . numgen random mod 3 map @endpoints-tcp
	}
	chain endpoint-a {
		meta l4proto tcp dnat to 10.244.1.11:8080
	}
	chain svc-default/bench-00002/tcp/http {
		numgen random mod 4 vmap { 0 : goto endpoint-a, 1 : goto endpoint-a, 2 : goto endpoint-a, 3 : goto endpoint-a }
	}
	chain svc-default/bench-00003/tcp/http {
		numgen random mod 2 0 meta l4proto tcp dnat to 10.244.1.11:8080
		meta l4proto tcp dnat to 10.244.1.12:8080
	}
}
`

func TestNFTViewCountsEndpointsOfEveryPortShape(t *testing.T) {
	nft := testenv.NeedTool(t, "nft")
	ns := testns.New(t, "benchview")
	path := filepath.Join(t.TempDir(), "shapes.nft")
	if err := os.WriteFile(path, []byte(shapes), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, nft, "-f", path)
	v, err := newNFTView(ns.Name, "proxyd", "svc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.close)
	ports, err := v.ports(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 3 || ports["bench-00001"].key == nil || ports["bench-00003"].chain != "svc-default/bench-00003/tcp/http" {
		t.Fatalf("ports = %v", ports)
	}
	for name, want := range map[string]int{"bench-00001": 3, "bench-00002": 4, "bench-00003": 2} {
		got, err := v.endpoints(context.Background(), ports[name])
		if err != nil || got != want {
			t.Errorf("%s: %d endpoints (%v), want %d", name, got, err, want)
		}
	}
	// A change moves the element to another pick chain, in one transaction.
	ns.Run(t, nft, "add chain ip proxyd pick-tcp-2; delete element ip proxyd service-ips { 10.96.0.1 . tcp . 80 }; add element ip proxyd service-ips { 10.96.0.1 . tcp . 80 comment \"default/bench-00001/tcp/http\" : goto pick-tcp-2 }")
	if got, err := v.endpoints(context.Background(), ports["bench-00001"]); err != nil || got != 2 {
		t.Errorf("after the change: %d endpoints (%v), want 2", got, err)
	}
}
