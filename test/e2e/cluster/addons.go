package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// coreDNSManifest is kube-dns as kubeadm deploys it, trimmed to the plugins
// hack/coredns builds: no upstream forwarding (the lab has no internet).
const coreDNSManifest = `apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations:
      - {key: node-role.kubernetes.io/control-plane, effect: NoSchedule}
      containers:
      - name: coredns
        image: {{image}}
        imagePullPolicy: IfNotPresent
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 10
          periodSeconds: 10
          failureThreshold: 5
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items: [{key: Corefile, path: Corefile}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: {{dns}}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
`

// Apply writes manifest to the lab's Dir and runs kubectl apply on it.
func (c *Cluster) Apply(ctx context.Context, name, manifest string) error {
	path := filepath.Join(c.Lab.Dir, name+".yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		return err
	}
	if out, err := c.Lab.Kubectl(ctx, "apply", "-f", path); err != nil {
		return fmt.Errorf("apply %s: %w\n%s", name, err, out)
	}
	return nil
}

// DeployCoreDNS deploys kube-dns with image and waits until CoreDNS is
// Ready. It needs a Service proxy: CoreDNS reaches the apiserver through
// the kubernetes Service.
func (c *Cluster) DeployCoreDNS(ctx context.Context, image string) error {
	m := strings.NewReplacer("{{image}}", image, "{{dns}}", DNSIP).Replace(coreDNSManifest)
	if err := c.Apply(ctx, "coredns", m); err != nil {
		return err
	}
	_, err := c.WaitPodsReady(ctx, "kube-system", "k8s-app=kube-dns", 1, 2*time.Minute)
	return err
}

// WaitPodsReady waits until exactly want Pods match selector in ns, all
// Ready.
func (c *Cluster) WaitPodsReady(ctx context.Context, ns, selector string, want int, timeout time.Duration) ([]string, error) {
	pods, err := c.Nodes[0].WaitPodsReady(ctx, ns, selector, want, timeout)
	if err != nil {
		out, _ := c.Lab.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		return nil, fmt.Errorf("%w\n%s", err, out)
	}
	var names []string
	for _, p := range pods {
		names = append(names, p.Name+"@"+p.Spec.NodeName)
	}
	return names, nil
}

// NodeNames returns the kubelet nodes' names, node1 first.
func (c *Cluster) NodeNames() []string {
	var names []string
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	return names
}
