package app

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestNodeCIDRModeUsesTheNodesPodCIDRsOnceAssigned(t *testing.T) {
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	client := fake.NewClientset(node)
	go func() {
		time.Sleep(1500 * time.Millisecond) // after the first look
		node.Spec.PodCIDRs = []string{"10.244.3.0/24", "fd00:10:244:3::/64"}
		_, _ = client.CoreV1().Nodes().Update(context.Background(), node, metav1.UpdateOptions{})
	}()
	o := &Options{DetectLocalMode: "NodeCIDR", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	got, err := detectLocal(context.Background(), o, client, "n1")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}
	if !slices.Equal(got, want) || !slices.Equal(o.ClusterCIDRs, want) {
		t.Errorf("local CIDRs %v, options %v; want %v", got, o.ClusterCIDRs, want)
	}
}

func TestClusterCIDRModeLeavesTheOptionsAlone(t *testing.T) {
	for _, mode := range []string{"ClusterCIDR", "BridgeInterface"} {
		o := &Options{DetectLocalMode: mode, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
		if got, err := detectLocal(context.Background(), o, fake.NewClientset(), "n1"); err != nil || got != nil || len(o.ClusterCIDRs) != 1 {
			t.Errorf("%s: %v %v %v", mode, got, err, o.ClusterCIDRs)
		}
	}
}

func TestAChangedPodCIDREndsTheDaemonWithTheReason(t *testing.T) {
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.3.0/24"}}}
	client := fake.NewClientset(node)
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	want := []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}
	go watchPodCIDRs(ctx, stop, client, "n1", want, 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	if ctx.Err() != nil {
		t.Fatalf("stopped while the pod CIDRs were unchanged: %v", context.Cause(ctx))
	}
	node.Spec.PodCIDRs = []string{"10.244.4.0/24"}
	if _, err := client.CoreV1().Nodes().Update(context.Background(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a changed pod CIDR did not stop the daemon")
	}
	if err := context.Cause(ctx); errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "10.244.4.0/24") {
		t.Errorf("cause = %v", err)
	}
}

func TestDetectLocalModeIsValidated(t *testing.T) {
	if _, err := Parse([]string{"--detect-local-mode=Sometimes"}); err == nil || !strings.Contains(err.Error(), "--detect-local-mode") {
		t.Errorf("err = %v", err)
	}
}
