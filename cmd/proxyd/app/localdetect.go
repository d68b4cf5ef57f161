package app

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// LocalModes are kube-proxy's --detect-local-mode values.
var LocalModes = []string{"ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix"}

// podCIDRWait bounds the wait for the Node's spec.podCIDRs, as kube-proxy's.
const podCIDRWait = 5 * time.Minute

// detectLocal applies --detect-local-mode before the backend is built:
// with NodeCIDR, traffic is local when it comes from the Node's
// spec.podCIDRs, which replace --cluster-cidr (proxyd waits for them to be
// assigned); the interface modes are not implemented and fall back to
// --cluster-cidr, which it says once. It returns the CIDRs a later change
// must be checked against (nil unless NodeCIDR).
func detectLocal(ctx context.Context, o *Options, client kubernetes.Interface, node string) ([]netip.Prefix, error) {
	switch o.DetectLocalMode {
	case "NodeCIDR":
	case "BridgeInterface", "InterfaceNamePrefix":
		klog.InfoS("--detect-local-mode is not implemented; local traffic is what comes from --cluster-cidr",
			"mode", o.DetectLocalMode, "clusterCIDRs", o.ClusterCIDRs)
		return nil, nil
	default:
		return nil, nil
	}
	deadline := time.Now().Add(podCIDRWait)
	for {
		cidrs, err := podCIDRs(ctx, client, node)
		switch {
		case err == nil && len(cidrs) > 0:
			klog.InfoS("Local traffic is what comes from the Node's pod CIDRs", "node", node, "podCIDRs", cidrs)
			o.ClusterCIDRs = cidrs
			return cidrs, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case time.Now().After(deadline):
			return nil, fmt.Errorf("--detect-local-mode=NodeCIDR: Node %s has no spec.podCIDRs after %v (last error: %v)", node, podCIDRWait, err)
		}
		klog.InfoS("Waiting for the Node's spec.podCIDRs (--detect-local-mode=NodeCIDR)", "node", node, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func podCIDRs(ctx context.Context, client kubernetes.Interface, node string) ([]netip.Prefix, error) {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	list := n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		list = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("node %s: spec.podCIDRs %q: %w", node, s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// watchPodCIDRs ends the daemon (through stop) when the Node's pod CIDRs
// stop being want: the rules were written for them, and kube-proxy
// restarts in that case too. It checks every period.
func watchPodCIDRs(ctx context.Context, stop context.CancelCauseFunc, client kubernetes.Interface, node string, want []netip.Prefix, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		got, err := podCIDRs(ctx, client, node)
		if err != nil || slices.Equal(got, want) {
			continue
		}
		stop(fmt.Errorf("--detect-local-mode=NodeCIDR: Node %s's pod CIDRs changed from %v to %v; exiting so that the next start uses them", node, want, got))
		return
	}
}
