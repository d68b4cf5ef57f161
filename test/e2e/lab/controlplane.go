package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	etcdTimeout   = 30 * time.Second
	readyzTimeout = 90 * time.Second
)

// startControlPlane runs etcd and kube-apiserver in the node namespace and
// waits until the apiserver's /readyz says ok.
func (l *Lab) startControlPlane(ctx context.Context) error {
	etcd, err := l.startProcess(tierEtcd, l.NodeNS, "etcd.log", filepath.Join(l.BinDir, "etcd"),
		"--name=lab",
		"--data-dir="+filepath.Join(l.Dir, "etcd-data"),
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=lab=http://127.0.0.1:2380",
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	plain := &http.Client{Transport: &http.Transport{DialContext: DialContext(l.NodeNS), DisableKeepAlives: true}}
	if _, err := l.waitHTTP(ctx, etcd, plain, "http://127.0.0.1:2379/health", etcdTimeout,
		func(code int, body string) bool { return code == 200 && strings.Contains(body, `"true"`) }); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	return l.startAPIServer(ctx)
}

// startAPIServer runs kube-apiserver in the node namespace and waits until
// its /readyz says ok, recording how long that took in ReadyzDuration.
func (l *Lab) startAPIServer(ctx context.Context) error {
	f := l.pki.files
	apiserver, err := l.startProcess(tierAPIServer, l.NodeNS, "kube-apiserver.log", filepath.Join(l.BinDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		// All addresses, but only of the node namespace: 127.0.0.1 for
		// clients in the node, NodeIP for the "kubernetes" Service.
		"--bind-address=0.0.0.0",
		"--secure-port=6443",
		"--advertise-address="+l.NodeIP,
		"--service-cluster-ip-range="+ServiceCIDRs,
		"--tls-cert-file="+f["serving-cert"],
		"--tls-private-key-file="+f["serving-key"],
		"--client-ca-file="+f["ca"],
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+f["sa-pub"],
		"--service-account-signing-key-file="+f["sa-key"],
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--kubelet-preferred-address-types=InternalIP",
		"--cert-dir="+filepath.Join(l.Dir, "apiserver-certs"),
	)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.apiserver = apiserver
	l.mu.Unlock()
	client, err := l.adminHTTPClient()
	if err != nil {
		return err
	}
	d, err := l.waitHTTP(ctx, apiserver, client, l.APIServerURL+"/readyz", readyzTimeout,
		func(code int, body string) bool { return code == 200 })
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	l.ReadyzDuration = d
	l.logf("lab %s: kube-apiserver ready after %.1fs", l.ID, d.Seconds())
	return nil
}

// adminHTTPClient is an HTTPS client into the node namespace that trusts
// the lab CA and presents the admin certificate.
func (l *Lab) adminHTTPClient() (*http.Client, error) {
	cfg, err := l.RESTConfig()
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
	if err != nil {
		return nil, fmt.Errorf("admin key pair: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(l.pki.pem)
	return &http.Client{Transport: &http.Transport{
		DialContext:       DialContext(l.NodeNS),
		TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
		DisableKeepAlives: true,
	}}, nil
}

// waitHTTP polls url until ok says so, the process exits, ctx ends or
// timeout passes, logging progress every 5 s. Errors carry the tail of the
// process's log. It returns the time from the process's start.
func (l *Lab) waitHTTP(ctx context.Context, p *Process, c *http.Client, url string, timeout time.Duration,
	ok func(code int, body string) bool) (time.Duration, error) {
	begin := time.Now()
	deadline := begin.Add(timeout)
	nextLog := begin.Add(5 * time.Second)
	last := "no answer yet"
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if ok(resp.StatusCode, string(b)) {
				cancel()
				return time.Since(begin), nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, lastLines(string(b), 3))
		} else {
			last = err.Error()
		}
		cancel()
		now := time.Now()
		switch {
		case p.Exited():
			return 0, fmt.Errorf("%s exited (%v) before %s was ok; log tail:\n%s", p.name, p.Err(), url, tailFile(p.Log, 30))
		case ctx.Err() != nil:
			return 0, fmt.Errorf("waiting for %s: %w", url, ctx.Err())
		case now.After(deadline):
			return 0, fmt.Errorf("%s not ok after %s (last: %s); log tail:\n%s", url, timeout, last, tailFile(p.Log, 30))
		case now.After(nextLog):
			l.logf("lab %s: waiting for %s (%.0fs, last: %s)", l.ID, url, now.Sub(begin).Seconds(), last)
			nextLog = now.Add(5 * time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	return strings.ReplaceAll(tailString(s, n), "\n", " | ")
}

// createNode creates the Node object NodeName with the lab's Pod CIDRs, sets
// its addresses (InternalIP = NodeIP, NodeIPv6) and a Ready condition, and
// waits for the default/kubernetes Service.
func (l *Lab) createNode(ctx context.Context) error {
	cs, err := l.Clientset()
	if err != nil {
		return err
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: l.NodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": l.NodeName,
				"kubernetes.io/os":       "linux",
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: PodCIDR, PodCIDRs: []string{PodCIDR, PodCIDRv6}},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", l.NodeName, err)
	}
	// A hand-built patch: marshalling a whole NodeStatus would also send
	// its non-omitempty zero structs (daemonEndpoints, nodeInfo).
	now := metav1.Now().UTC().Format(time.RFC3339)
	status := map[string]any{"status": map[string]any{
		"addresses": []map[string]string{
			{"type": string(corev1.NodeInternalIP), "address": l.NodeIP},
			{"type": string(corev1.NodeInternalIP), "address": l.NodeIPv6},
			{"type": string(corev1.NodeHostName), "address": l.NodeName},
		},
		"conditions": []map[string]string{{
			"type": string(corev1.NodeReady), "status": string(corev1.ConditionTrue), "reason": "LabReady",
			"message": "set by the proxyd test lab", "lastHeartbeatTime": now, "lastTransitionTime": now,
		}},
	}}
	patch, err := json.Marshal(status)
	if err != nil {
		return err
	}
	if _, err := cs.CoreV1().Nodes().Patch(ctx, l.NodeName, types.MergePatchType, patch,
		metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("patch node %s status: %w", l.NodeName, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			return fmt.Errorf("service default/kubernetes: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
