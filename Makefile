# l7gate — see README.md for what each target does.
GO        ?= go
BIN       := bin/l7gate
PROXY_BIN := bin/l7gate-proxy
GOTESTFLAGS ?= -timeout 25m
PKGS      := ./...

.PHONY: all build generate test bench bench-socklb scale lint demo deps clean

all: build

deps:
	@bash hack/install-deps.sh

# bin/l7gate (everything) and bin/l7gate-proxy (the proxy-only build: the
# proxy command without the agent's packages, about a third of the idle RSS),
# both stamped with one version (hack/version.sh; VERSION=... overrides). The
# agent starts the l7gate-proxy next to it, and only if its version is its own.
build:
	@v=$${VERSION:-$$(bash hack/version.sh)}; set -x; \
	$(GO) build -ldflags "-X main.buildVersion=$$v" -o $(BIN) ./cmd/l7gate && \
	$(GO) build -tags l7gate_proxyonly -ldflags "-X main.buildVersion=$$v" -o $(PROXY_BIN) ./cmd/l7gate

# Regenerates committed generated code (bpf2go objects, protobuf Go).
generate: deps
	$(GO) generate ./...

# Unit, golden, fuzz-seed and (as root) TestPrivileged… tests.
test: deps
	$(GO) vet ./...
	$(GO) vet -tags l7gate_proxyonly ./cmd/l7gate
	$(GO) test $(GOTESTFLAGS) $(PKGS)

# Benchmarks (root): the scenario harness in bench/ (see bench/README.md)
# writes bench/results/<date>.{json,md}, latest.md and PNG charts; ratios
# are taken within one run. BENCHFLAGS="-only keepalive,fixedrate" or
# "-quick" narrow it. Never asserts on timing.
bench: deps bench-socklb
	@bash hack/install-bench-deps.sh
	$(GO) run ./bench/cmd/l7gate-bench $(BENCHFLAGS)

# Socket LB (root): connect() with 10 / 10k / 100k services against no
# program, and SyncServices with one changed backend among 100k.
bench-socklb:
	$(GO) test -run '^$$' -bench 'SocketLBConnect' -benchtime 20000x -count 3 ./bpf/
	$(GO) test -run '^$$' -bench 'SocketLBSyncOneBackend' -benchtime 100x -count 3 ./bpf/

# Scale: a real kube-apiserver + etcd and N simulated agents (the real k8s
# source, policy computation and status writer; no datapath) per N, P pods,
# policy and pod changes (bench/scale, bench/README.md). Writes
# bench/results/scale-<time>.{json,md}. Never asserts on timing; a small N
# runs in `make test` (TestScaleSmall). An entry N/K runs K full agents and
# N-K light ones (default K=2; bench/scale/doc.go), N/K/L with status nodes
# limit L (-1: every node in status.nodes). SCALE_NODES=10
# SCALEFLAGS="-scale.pods=1000" narrows it; SCALEFLAGS="-scale.profile=DIR"
# writes CPU profiles of the policy changes (API server process, agents)
# and the agents' heap profile.
SCALE_NODES ?= 10/10,10,50,200
scale:
	cd bench/scale && $(GO) test -count=1 -timeout 0 -run '^TestScale$$' -v . -args -scale.nodes=$(SCALE_NODES) $(SCALEFLAGS)

# Soak (root): the real agent, datapath and Go proxy on a node in network
# namespaces for DURATION (default 10m) with keep-alive HTTP/1.1, h2c, gRPC
# and Kafka clients and a new-connection loop through L7 policy, policy
# churn (10k changes per 10 minutes), allow/deny flips, pods that come and
# go, a proxy hand-over every 30 s, a proxy SIGKILL every 2 minutes and one
# agent SIGKILL (bench/soak). Writes bench/results/soak-<time>.{md,svg};
# fails on a denied request that got through or an allowed one that failed
# outside a crash. `make soak DURATION=2m` takes ~3 minutes.
DURATION ?= 10m
.PHONY: soak
soak:
	cd bench/soak && $(GO) test -count=1 -timeout 0 -run '^TestPrivilegedSoak$$' -v . -args -soak.duration=$(DURATION)

lint:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# The starwars scenario in network namespaces on the real datapath and proxy
# (needs root; installs what it needs). SCENARIO=DIR runs another scenario.
demo: deps build
	bin/l7gate demo $(if $(SCENARIO),--scenario $(SCENARIO))

clean:
	rm -rf bin

# Renders deploy/l7gate.yaml and deploy/crds.yaml with Helm itself (helm
# template / helm show crds of deploy/helm/l7gate, default values; helm is
# built once into the cache). TestRenderGolden checks that deploy.Render, the
# in-process renderer tests use, gives the same objects.
.PHONY: manifests
manifests:
	@bash hack/manifests.sh

# ---- a real cluster on this machine (hack/cluster.sh; root) ----
# Components and images are built once and cached in $(L7GATE_CACHE)
# (default /var/cache/l7gate), keyed by version.
.PHONY: image cluster-up cluster-down e2e
# The l7gate image tarball (ghcr.io/l7gate/l7gate:$(IMAGE_TAG), default the
# chart's appVersion); prints its path. Load it with
# `ctr -n k8s.io images import` or `docker load`.
image:
	@bash hack/images.sh l7gate

# Leaves a cluster running and prints the KUBECONFIG and kubectl to use.
cluster-up:
	@bash hack/cluster.sh up

cluster-down:
	@bash hack/cluster.sh down

# Brings a cluster up, runs the e2e suite (e2e/, go test -tags e2e), tears
# everything down (also on failure and Ctrl-C) and fails if anything is
# left over. E2E_RUN=Step1 narrows it, E2E_KEEP=1 keeps the cluster,
# E2E_NODES=1 runs one node.
e2e: deps
	@bash hack/cluster.sh e2e
