package cluster

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Contender is a Service proxy deployed as a DaemonSet on every node.
type Contender struct {
	// Name is proxyd-<mode> or kube-proxy-<mode>.
	Name string
	// Proxy is "proxyd" or "kube-proxy"; Mode its --proxy-mode.
	Proxy, Mode string
}

// Contenders are the proxies the upstream suite runs against.
var Contenders = []Contender{
	{"proxyd-nftables", "proxyd", "nftables"},
	{"proxyd-iptables", "proxyd", "iptables"},
	{"proxyd-ipvs", "proxyd", "ipvs"},
	{"kube-proxy-nftables", "kube-proxy", "nftables"},
	{"kube-proxy-iptables", "kube-proxy", "iptables"},
}

// ContenderByName finds a contender.
func ContenderByName(name string) (Contender, error) {
	for _, c := range Contenders {
		if c.Name == name {
			return c, nil
		}
	}
	return Contender{}, fmt.Errorf("no contender %q", name)
}

// KubeProxyImage is the image hack/image makes of the kube-proxy binary
// `make tools` builds.
const KubeProxyImage = "proxyd.local/kube-proxy:v1.37.2"

// kubeProxyManifest is kube-proxy's DaemonSet as kubeadm writes it
// (privileged, hostNetwork, the system:node-proxier binding, label
// k8s-app=kube-proxy), with flags instead of the ConfigMap; the apiserver's
// real address comes from the environment, as for proxyd.
const kubeProxyManifest = `apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-proxy, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-proxier"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-proxier"}
subjects:
- {kind: ServiceAccount, name: kube-proxy, namespace: kube-system}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-proxy
  namespace: kube-system
  labels: {k8s-app: kube-proxy}
spec:
  selector:
    matchLabels: {k8s-app: kube-proxy}
  template:
    metadata:
      labels: {k8s-app: kube-proxy}
    spec:
      serviceAccountName: kube-proxy
      priorityClassName: system-node-critical
      hostNetwork: true
      tolerations:
      - operator: Exists
      containers:
      - name: kube-proxy
        image: {{image}}
        imagePullPolicy: IfNotPresent
        command:
        - /usr/local/bin/kube-proxy
        - --proxy-mode={{mode}}
        - --hostname-override=$(NODE_NAME)
        - --cluster-cidr=10.244.0.0/16
        - --metrics-bind-address=127.0.0.1:10249
        - --healthz-bind-address=0.0.0.0:10256
        - --conntrack-max-per-core=0
        env:
        - name: NODE_NAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - {name: KUBERNETES_SERVICE_HOST, value: "{{apiserver}}"}
        - {name: KUBERNETES_SERVICE_PORT, value: "6443"}
        securityContext:
          privileged: true
        volumeMounts:
        - {name: xtables-lock, mountPath: /run/xtables.lock}
        - {name: lib-modules, mountPath: /lib/modules, readOnly: true}
      volumes:
      - name: xtables-lock
        hostPath: {path: /run/xtables.lock, type: FileOrCreate}
      - name: lib-modules
        hostPath: {path: /lib/modules}
`

// Deploy runs the contender as a DaemonSet and waits until its Pod is
// Ready on every node and has programmed the kube-dns Service (its
// endpoints answer through the ClusterIP from node1).
func (c *Cluster) Deploy(ctx context.Context, ct Contender, repoRoot string) error {
	var selector string
	switch ct.Proxy {
	case "proxyd":
		selector = "app.kubernetes.io/name=proxyd"
		if err := c.Nodes[0].ApplyProxyd(ctx, repoRoot+"/deploy/daemonset.yaml", ct.Mode); err != nil {
			return err
		}
	case "kube-proxy":
		selector = "k8s-app=kube-proxy"
		m := strings.NewReplacer("{{image}}", KubeProxyImage, "{{mode}}", ct.Mode, "{{apiserver}}", ControlPlaneIP).Replace(kubeProxyManifest)
		if err := c.Apply(ctx, "kube-proxy", m); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown proxy %q", ct.Proxy)
	}
	if _, err := c.WaitPodsReady(ctx, "kube-system", selector, len(c.Nodes), 3*time.Minute); err != nil {
		return fmt.Errorf("%s: %w", ct.Name, err)
	}
	return nil
}
