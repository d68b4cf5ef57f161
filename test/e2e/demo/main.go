// Command demo is `make demo`: it brings up the lab (a real etcd and
// kube-apiserver, a node network namespace, three echo Pods and a client),
// runs proxyd, creates a Service over the Pods, sends 100 connections,
// prints where they went and a few metric lines, and tears it all down.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxyd/proxyd/test/e2e/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		log.Printf("demo failed: %v", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	mode := os.Getenv("MODE")
	if mode == "" {
		mode = "nftables"
	}
	step("starting the lab: etcd + kube-apiserver in a node netns, 3 echo Pods, a client")
	l, err := lab.Start(ctx, lab.Config{Logf: func(f string, a ...any) { fmt.Printf("    "+f+"\n", a...) }})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing the lab down")
		if err := l.Close(); err != nil {
			log.Printf("teardown: %v", err)
		}
	}()
	cs, err := l.Clientset()
	if err != nil {
		return err
	}

	step("starting proxyd --mode " + mode)
	px, err := l.StartProcess(l.NodeNS, "proxyd.log", os.Getenv("PROXYD_BIN"), "--mode", mode,
		"--kubeconfig", l.ProxyKubeconfig, "--hostname-override", l.NodeName,
		"--cluster-cidr", "10.244.0.0/16", "--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256")
	if err != nil {
		return err
	}

	step("creating Service default/web (ClusterIP 10.96.0.10:80) and its EndpointSlice over pod1..pod3:8080")
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: v1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}}
	if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	es := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default",
		Labels: map[string]string{discovery.LabelServiceName: "web"}}, AddressType: discovery.AddressTypeIPv4,
		Ports: []discovery.EndpointPort{{Name: ptr("http"), Protocol: ptr(v1.ProtocolTCP), Port: ptr(int32(8080))}}}
	for _, p := range l.Pods {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{p.IP}, Conditions: discovery.EndpointConditions{Ready: ptr(true)}})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return err
	}

	step("waiting for the VIP to answer")
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := l.Traffic(ctx, l.ClientNS, "tcp", "10.96.0.10:80", 1, 1)
		if err == nil && r.Answered() == 1 {
			break
		}
		if px.Exited() || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("VIP never answered (proxyd log: %s)", px.Log)
		}
		time.Sleep(100 * time.Millisecond)
	}

	step("100 TCP connections from the client netns to 10.96.0.10:80")
	r, err := l.Traffic(ctx, l.ClientNS, "tcp", "10.96.0.10:80", 100, 3)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(r.Counts))
	for n := range r.Counts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("    %-5s %3d  %s\n", n, r.Counts[n], strings.Repeat("█", r.Counts[n]/2))
	}
	fmt.Printf("    failed: %d, connections that switched Pod mid-stream: %d\n", r.Failed(), r.StickyViolations)

	step("the kernel's view: nft list table ip proxyd (excerpt)")
	if out, err := l.Exec(ctx, l.NodeNS, "nft", "list", "chain", "ip", "proxyd", "svc-default/web/tcp/http"); err == nil {
		fmt.Println(indent(out))
	}

	step("metrics from http://127.0.0.1:10249/metrics")
	_, body, err := l.HTTPGet(ctx, l.NodeNS, "http://127.0.0.1:10249/metrics")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(body, "\n") {
		for _, p := range []string{"kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_sync_proxy_rules_duration_seconds_sum",
			"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_sync_proxy_rules_endpoint_changes_total",
			"kubeproxy_sync_proxy_rules_service_changes_total", "proxyd_syncs_total"} {
			if strings.HasPrefix(line, p) {
				fmt.Println("    " + line)
			}
		}
	}
	if err := px.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		log.Printf("stop proxyd: %v", err)
	}
	return nil
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

func ptr[T any](v T) *T { return &v }
