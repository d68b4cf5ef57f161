# proxyd — `make test` is everything CI runs; `make demo` shows it working.
# Both work on a fresh Debian machine as root: they install what they need.

SHELL := /bin/bash
GO ?= go
# Builds of upstream components (kube-apiserver, etcd, kubectl, kube-proxy,
# the Debian kernel for the IPVS VM) are cached here, keyed by content, so
# a second run or CI on the same machine skips them.
CACHE ?= $(HOME)/.cache/proxyd
BIN := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2
# containerd, runc and the CNI plugins are installed by test/e2e/node itself,
# under a policy-rc.d that keeps the package from starting a host daemon.
APT_PACKAGES := nftables iptables conntrack ipset iproute2 openssl curl \
	qemu-system-x86 busybox-static cpio xz-utils gcc libc6-dev
E2E_TIMEOUT ?= 30m

export CGO_ENABLED := 0

.PHONY: all build test unit race fuzz lab e2e e2e-node e2e-cluster e2e-upstream e2e-tools e2e-images images lint deps tools demo bench bench-smoke soak clean ipvs-vm help kind-up kind-deploy kind-down

all: build

help:
	@echo "make build   - build bin/proxyd"
	@echo "make test    - lint, unit, kernel and e2e tests (what CI runs; needs root)"
	@echo "make demo    - a real control plane + node lab, proxyd, traffic, metrics"
	@echo "make bench   - the performance harness against upstream kube-proxy"
	@echo "make soak    - an hour of churn (SOAK_DURATION): 0 failed connections, flat RSS, kernel = model"
	@echo "make e2e-upstream - the upstream e2e Service tests, proxyd and kube-proxy side by side (hours)"
	@echo "make lint    - gofmt, go vet, staticcheck"
	@echo "make fuzz    - every fuzz target for FUZZTIME (30s) each"

build:
	$(GO) build -trimpath -o $(BIN)/proxyd ./cmd/proxyd

# deps installs the Debian packages the lab and the kernel tests use, once.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo ">>> installing Debian packages:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(GO) mod download

# tools builds the pinned upstream control plane and peer (10-20 minutes
# the very first time on 2 cores; progress lines show it is alive).
tools:
	@mkdir -p $(CACHE)
	@hack/build-tools.sh $(CACHE) etcd kube-apiserver kubectl kube-proxy kubelet kube-controller-manager kube-scheduler > $(CACHE)/.bin-path
	@echo ">>> upstream binaries in $$(cat $(CACHE)/.bin-path)"

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e,e2ecluster,e2enode,ipvsvm ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# unit runs every package's tests but the lab's, which need the upstream
# binaries (see lab). With CI set, a test that lacks a tool or root fails
# instead of skipping (internal/testenv).
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v '/test/e2e/lab$$')

# race runs the tests of the packages with goroutines of their own (the
# sync runner, informers, the balance collector, health servers, the daemon)
# under the race detector: ~70 s on 2 busy cores, most of it compiling.
# The kernel-heavy backend packages stay out: their tests are sequential and
# would take several times longer.
RACE_PKGS := ./pkg/balance ./pkg/informer ./pkg/proxier ./pkg/healthcheck ./pkg/healthz \
	./pkg/metrics ./pkg/model ./cmd/proxyd/app
race:
	CGO_ENABLED=1 $(GO) test -race -count=1 $(RACE_PKGS)

# lab runs test/e2e/lab's own tests (the lab topology, its sweep, upstream
# kube-proxy carrying Service traffic in it) against the built binaries.
lab: tools
	PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) $(GO) test -count=1 -timeout $(E2E_TIMEOUT) ./test/e2e/lab/

# fuzz runs each fuzz target for FUZZTIME, one after another: the
# conversions of Services and EndpointSlices, Build over colliding
# Services, the incremental Builder against Build, and Build carried into
# the nftables and iptables renderings and a full plan. A failing input
# lands in the package's testdata/fuzz. About 3 min of make test.
FUZZTIME ?= 30s
FUZZ_TARGETS := ./pkg/informer/convert:FuzzConvertService ./pkg/informer/convert:FuzzConvertEndpointSlice \
	./pkg/model:FuzzBuild ./pkg/model:FuzzUpdate ./pkg/model:FuzzBuildRenderPlan
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo ">>> fuzzing $${t#*:} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) $${t%%:*} || exit 1; \
	done

e2e: build tools
	PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) PROXYD_BIN=$(BIN)/proxyd \
		$(GO) test -count=1 -tags e2e -timeout $(E2E_TIMEOUT) -v ./test/e2e/

ipvs-vm:
	hack/ipvs-vm/run.sh $(CACHE)

# images writes OCI tarballs (proxyd:dev with the iptables userspace from
# Debian packages, pause, echo) without Docker.
images: build
	$(GO) run ./hack/image -out $(BIN)/images -proxyd $(BIN)/proxyd

# e2e-node runs proxyd as the DaemonSet of a real kubelet + containerd node.
e2e-node: build tools images
	PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) PROXYD_BIN=$(BIN)/proxyd PROXYD_NODE_IMAGES=$(BIN)/images \
		$(GO) test -count=1 -tags e2enode -timeout $(E2E_TIMEOUT) -v ./test/e2e/node/

# e2e-tools builds what the cluster lab and the upstream suite need from
# source: e2e.test, agnhost, regression-issue-74839 and the ginkgo CLI
# (hack/e2e-tools, k8s.io/kubernetes v1.37.2) and CoreDNS (hack/coredns),
# cached under $(CACHE) like `make tools`.
e2e-tools:
	@mkdir -p $(CACHE)
	@hack/build-tools.sh $(CACHE) ginkgo agnhost regression-issue-74839 e2e.test > $(CACHE)/.e2e-bin-path
	@hack/build-tools.sh $(CACHE) coredns > $(CACHE)/.coredns-bin-path

# e2e-images writes every image the cluster lab imports into its nodes
# (bin/images): proxyd, pause, echo, and under their upstream names the
# e2e test images, CoreDNS and kube-proxy. Unchanged images are not rewritten.
E2E_IMAGES := proxyd,pause,echo,agnhost,busybox,distroless-iptables,regression-issue-74839,coredns,kube-proxy
e2e-images: build tools e2e-tools
	E=$$(cat $(CACHE)/.e2e-bin-path); $(GO) run ./hack/image -out $(BIN)/images -only $(E2E_IMAGES) -proxyd $(BIN)/proxyd \
		-agnhost $$E/agnhost -regression-issue-74839 $$E/regression-issue-74839 \
		-coredns $$(cat $(CACHE)/.coredns-bin-path)/coredns -kube-proxy $$(cat $(CACHE)/.bin-path)/kube-proxy

UPSTREAM_ENV = PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) PROXYD_E2E_BIN=$$(cat $(CACHE)/.e2e-bin-path)

# e2e-cluster (CI) runs the cross-node paths on a two-node cluster lab with
# proxyd as its DaemonSet, then the upstream [Conformance] Services tests
# against it (results under $(CACHE), not docs/).
e2e-cluster: e2e-images
	$(UPSTREAM_ENV) PROXYD_CLUSTER_IMAGES=$(BIN)/images \
		$(GO) test -count=1 -tags e2ecluster -timeout $(E2E_TIMEOUT) -v ./test/e2e/cluster/
	$(UPSTREAM_ENV) $(GO) run ./test/e2e/upstream -contenders proxyd-nftables -nodes 2 -images $(BIN)/images \
		-focus '\[sig-network\] Services .*\[Conformance\]' -out $(CACHE)/e2e-conformance -check

# e2e-upstream runs the upstream Service-proxy selection against every
# contender (proxyd-nftables three times, for flakes) and writes docs/e2e.
# Several hours on two cores; CONTENDERS= narrows it.
CONTENDERS ?= proxyd-nftables,proxyd-iptables,proxyd-ipvs,kube-proxy-nftables,kube-proxy-iptables
e2e-upstream: e2e-images
	$(UPSTREAM_ENV) $(GO) run ./test/e2e/upstream -contenders $(CONTENDERS) -repeat proxyd-nftables=3 -images $(BIN)/images -out docs/e2e

# bench measures proxyd against upstream kube-proxy in the same lab and
# writes docs/bench (CSVs, plots, targets.md, README.md) and the targets
# table in README.md: every contender at 1k Services, the nftables ones at
# 10k (iptables-nft-restore alone takes many minutes there; add them with
# BENCH_10K=all). The long rows are opt-in: BENCH_30K=1 adds 30k × 10,
# BENCH_135639=1 adds kubernetes#135639's 5k Services × 50 endpoints, where
# a full sync still running after 20 min is stopped and reported "> 20 min".
# BENCH_USERSPACE (default: BenchmarkUserspaceOneEndpointChange) runs the Go benchmark of the
# userspace part of one change into docs/bench/userspace.txt (the targets
# table reads its userspace-ms/op).
BENCH_10K ?= proxyd-nftables,kube-proxy-nftables
BENCH_USERSPACE ?= -bench '^BenchmarkUserspaceOneEndpointChange$$' ./test/pipeline/
BENCH_NFT := $(if $(filter all,$(BENCH_10K)),,-contenders $(BENCH_10K))
BENCH_RUN = PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) $(GO) run ./test/bench -proxyd $(BIN)/proxyd -out docs/bench -readme README.md
bench: build tools
	$(if $(BENCH_USERSPACE),{ echo "# date=$$(date -u +%FT%TZ)"; echo "# cmd=go test -count 5 $(BENCH_USERSPACE)"; \
		$(GO) test -run '^$$' -count 5 $(BENCH_USERSPACE); } > docs/bench/userspace.txt)
	$(BENCH_RUN) -n 1000
	$(BENCH_RUN) -n 10000 $(BENCH_NFT)
	$(if $(BENCH_30K),$(BENCH_RUN) -n 30000 $(BENCH_NFT))
	$(if $(BENCH_135639),$(BENCH_RUN) -n 5000 -pods 50 -sync-cap 20m $(BENCH_NFT))

# soak runs proxyd (nftables mode) in the lab under an hour of Service and
# EndpointSlice churn while a client connects to an untouched Service every
# 50 ms, and writes docs/soak/soak-<duration>.{csv,svg,png,md}. Not in CI.
SOAK_DURATION ?= 1h
soak: build tools
	PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) $(GO) run ./test/soak -duration $(SOAK_DURATION) -proxyd $(BIN)/proxyd -out docs/soak

# bench-smoke is CI's 1k row: it fails only if the harness breaks, and
# writes its results under the cache, not into docs/.
bench-smoke: build tools
	PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) $(GO) run ./test/bench -smoke -proxyd $(BIN)/proxyd -out $(CACHE)/bench-smoke

# make test is what CI runs, so it sets CI itself: a test that lacks a tool
# or root then fails instead of skipping (internal/testenv), whoever runs it.
test: export CI ?= 1
test: deps lint unit race fuzz lab e2e e2e-node e2e-cluster ipvs-vm bench-smoke

# kind, for users with Docker (not exercised in CI; see deploy/kind/README.md).
kind-up:
	kind create cluster --name proxyd --config deploy/kind/kind-config.yaml

kind-deploy:
	docker build -t proxyd:dev .
	kind load docker-image proxyd:dev --name proxyd
	kubectl apply -f deploy/daemonset.yaml
	CP=$$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' proxyd-control-plane); \
		kubectl -n kube-system set env daemonset/proxyd KUBERNETES_SERVICE_HOST=$$CP KUBERNETES_SERVICE_PORT=6443
	kubectl -n kube-system rollout status daemonset/proxyd

kind-down:
	kind delete cluster --name proxyd

demo: deps build tools
	PROXYD_LAB_BIN=$$(cat $(CACHE)/.bin-path) PROXYD_BIN=$(BIN)/proxyd $(GO) run ./test/e2e/demo

clean:
	rm -rf $(BIN)
