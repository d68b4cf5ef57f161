#!/usr/bin/env bash
# Builds the pinned upstream components (etcd, kube-apiserver, kubectl,
# kube-proxy and, on request, the node components) from hack/tools into a
# cache directory keyed by the tools module's go.sum, so that a second run,
# or CI on the same machine, skips the build.
#
# usage: hack/build-tools.sh CACHE_DIR component...
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=$1; shift
version=v1.37.2
key=$(cat "$here/tools/go.mod" "$here/tools/go.sum" | sha256sum | cut -c1-16)
bin="$cache/tools-$key/bin"
mkdir -p "$bin"

pkg_of() {
	case $1 in
	etcd) echo go.etcd.io/etcd/server/v3 ;;
	*) echo "k8s.io/kubernetes/cmd/$1" ;;
	esac
}

for c in "$@"; do
	if [[ -x "$bin/$c" ]]; then
		continue
	fi
	echo ">>> building $c $( [[ $c == etcd ]] && echo '(etcd 3.7)' || echo "$version") into $bin" \
		"— the first build of kube-apiserver takes 10-20 minutes on 2 cores" >&2
	start=$(date +%s)
	(
		cd "$here/tools"
		CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
			-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version" \
			-o "$bin/$c.tmp" "$(pkg_of "$c")"
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
