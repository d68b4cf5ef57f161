//go:build tools

// Package tools pins the upstream Kubernetes components the lab runs: the
// control plane proxyd is tested against and kube-proxy, the peer it is
// benchmarked against. It is its own module so that proxyd's go.mod never
// inherits k8s.io/kubernetes' dependency graph.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
