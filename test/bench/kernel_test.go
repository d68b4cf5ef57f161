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
// service chain the contenders write: an endpoint map (proxyd), a numgen
// over an anonymous verdict map (kube-proxy), numgen-guarded DNAT rules
// (proxyd before its endpoint maps).
const shapes = `table ip proxyd {
	map eps-default/bench-00001/tcp/http {
		typeof numgen random mod 65536 : ip daddr . tcp dport
		flags interval
		elements = { 0-21844 : 10.244.1.11 . 8080,
			     21845-43689 : 10.244.1.12 . 8080,
			     43690-65535 : 10.244.1.13 . 8080 }
	}
	chain endpoint-a {
		meta l4proto tcp dnat to 10.244.1.11:8080
	}
	chain svc-default/bench-00001/tcp/http {
		meta l4proto tcp dnat ip to numgen random mod 65536 map @eps-default/bench-00001/tcp/http
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

func TestNFTViewCountsEndpointsOfEveryChainShape(t *testing.T) {
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
	for chain, want := range map[string]int{
		"svc-default/bench-00001/tcp/http": 3,
		"svc-default/bench-00002/tcp/http": 4,
		"svc-default/bench-00003/tcp/http": 2,
	} {
		got, err := v.endpoints(context.Background(), chain)
		if err != nil || got != want {
			t.Errorf("%s: %d endpoints (%v), want %d", chain, got, err, want)
		}
	}
	chains, err := v.chains(context.Background())
	if err != nil || len(chains) != 3 || chains["bench-00001"] != "svc-default/bench-00001/tcp/http" {
		t.Errorf("chains = %v (%v)", chains, err)
	}
}
