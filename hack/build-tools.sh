#!/usr/bin/env bash
# Builds pinned upstream components into a cache directory keyed by the
# content of the Go module that pins them, so that a second run, or CI on the
# same machine, skips the build:
#
#   hack/tools      etcd kube-apiserver kubectl kube-proxy kubelet
#                   kube-controller-manager kube-scheduler (k8s v1.37.2)
#   hack/e2e-tools  e2e.test agnhost regression-issue-74839 ginkgo
#   hack/coredns    coredns
#
# The key is the module's go.mod and go.sum plus its Go files other than
# tools.go. All components of one call must come from one module; the
# script prints their directory.
#
# usage: hack/build-tools.sh CACHE_DIR component...
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=$1; shift
version=v1.37.2

module_of() {
	case $1 in
	e2e.test | agnhost | regression-issue-74839 | ginkgo) echo e2e-tools ;;
	coredns) echo coredns ;;
	*) echo tools ;;
	esac
}

pkg_of() {
	case $1 in
	etcd) echo go.etcd.io/etcd/server/v3 ;;
	e2e.test) echo k8s.io/kubernetes/test/e2e ;;
	agnhost | regression-issue-74839) echo "k8s.io/kubernetes/test/images/$1" ;;
	ginkgo) echo github.com/onsi/ginkgo/v2/ginkgo ;;
	coredns) echo . ;;
	*) echo "k8s.io/kubernetes/cmd/$1" ;;
	esac
}

module=$(module_of "$1")
for c in "$@"; do
	if [[ $(module_of "$c") != "$module" ]]; then
		echo "build-tools: $c is not in hack/$module; build it in a call of its own" >&2
		exit 2
	fi
done
dir="$here/$module"
key=$(cd "$dir" && cat go.mod go.sum $(ls *.go 2>/dev/null | grep -vx tools.go || true) | sha256sum | cut -c1-16)
bin="$cache/$module-$key/bin"
mkdir -p "$bin"

for c in "$@"; do
	if [[ -x "$bin/$c" ]]; then
		continue
	fi
	echo ">>> building $c from hack/$module into $bin" \
		"— the first build of kube-apiserver takes 10-20 minutes on 2 cores, e2e.test 5-10 more" >&2
	start=$(date +%s)
	ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version"
	(
		cd "$dir"
		export CGO_ENABLED=0 GOFLAGS=-mod=mod
		if [[ $c == e2e.test ]]; then
			# -vet=off: go test would otherwise vet ~2,000 dependencies.
			go test -c -vet=off -trimpath -ldflags "$ldflags" -o "$bin/$c.tmp" "$(pkg_of "$c")"
		else
			go build -trimpath -ldflags "$ldflags" -o "$bin/$c.tmp" "$(pkg_of "$c")"
		fi
	) &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 30
		kill -0 "$pid" 2>/dev/null && echo "    ... still building $c ($(( $(date +%s) - start ))s)" >&2
	done
	wait "$pid"
	mv "$bin/$c.tmp" "$bin/$c"
	echo ">>> built $c in $(( $(date +%s) - start ))s" >&2
done
echo "$bin"
