# kube-ipam — build, test and benchmark.
GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X kubeipam/internal/version.Version=$(VERSION)
BINARIES := kube-ipam-direct kube-ipam kube-multus kube-tier kube-ipamctl kube-ipam-controller kube-ipam-install

# The lab's own commands (not installed on nodes).
LAB_BINARIES := kube-ipam-lab kube-ipam-lab-pause

.PHONY: all build release test unit bench vet fmt-check clean testbin labbin whereabouts multus helm deps lab lab-down lab-bench

all: build

build:
	@mkdir -p $(BIN)
	@# Static binaries: they run on nodes and inside lab images with no libc.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES) $(LAB_BINARIES))
	@# The seed's 10-multus.conf says "type": "multus-cni" (multus v3.8's binary name).
	cp -f $(BIN)/kube-multus $(BIN)/multus-cni

# A release into dist/ (docs/release.md): static binaries for linux/amd64 and
# linux/arm64 stamped with VERSION, a tar.gz per platform, the multi-arch OCI
# image archive of the Dockerfile's layout (written in Go, no Docker daemon)
# and SHA256SUMS. VERSION=v0.1.0 for a tagged release; IMAGE names the
# image's repository (default kube-ipam, i.e. docker.io/library/kube-ipam).
IMAGE ?=
release:
	$(GO) run ./cmd/kube-ipam-release --version $(VERSION) --dist $(CURDIR)/dist \
		--revision "$$(git rev-parse HEAD 2>/dev/null)" $(if $(IMAGE),--image $(IMAGE))

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l cmd internal test bench 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# kube-apiserver, controller-manager, scheduler and kubectl v1.37.2 built from
# the Go module proxy into a cache outside the repository (about 10 minutes
# the first time, seconds afterwards).
testbin:
	@hack/testbin.sh >/dev/null

# flanneld and the flannel CNI plugin for the lab's cluster network, built
# from the Go module proxy into a cache outside the repository (about 2
# minutes the first time).
labbin:
	@hack/labbin.sh >/dev/null

# The whereabouts CNI IPAM plugin (the version pinned in the script) and its
# CRDs, for bench/kubestores_test.go, built from the Go module proxy into a
# cache outside the repository (under 2 minutes the first time).
whereabouts:
	@hack/whereabouts.sh >/dev/null

# Upstream multus (thin plugin, and the thick plugin's multus-shim and
# multus-daemon; the version pinned in the script) for test/upstream, built
# from the Go module proxy into a cache outside the repository (about 3
# minutes the first time).
multus:
	@hack/multus.sh >/dev/null

# helm (the version pinned in the script) for test/chart and the lab, which
# installs kube-ipam with charts/kube-ipam, built from the Go module proxy
# into a cache outside the repository (about 3 minutes the first time).
helm:
	@hack/helm.sh >/dev/null

# Debian packages the tests and the lab need (as root; skipped when present).
deps:
	@hack/deps.sh

# The seed's architecture on this machine: etcd, a control plane and 3 real
# kubelet nodes (containerd + runc, each in its own network namespace), our
# CNI chain, the seed's manifests, then the seed's verification with PASS/FAIL.
# kube-ipam is installed with charts/kube-ipam (helm).
# LAB_KEEP=1 keeps it running; `make lab-down` removes it. LAB_STORE=kubernetes
# keeps kube-ipam's allocations in the Kubernetes API (the chart's store:
# kubernetes) instead of the guide's etcd. LAB_MODE=nad gives pods the database network as
# a NetworkAttachmentDefinition under kube-multus's Kubernetes mode,
# LAB_MODE=multus under upstream multus (docs/guide-nad.md). See docs/lab.md.
lab: deps build testbin labbin multus helm
	$(BIN)/kube-ipam-lab up

# Pod start on the lab's real nodes (docs/lab.md, "Pod start"): N pods
# (LAB_BENCH_N, default 150) by one Deployment scaled at once, eth0 only,
# then net1 with kube-ipam, then with whereabouts; the table goes to
# /var/tmp/kube-ipam-lab-bench (LAB_BENCH_OUT). Brings up its own lab (mode
# nad) and takes it down afterwards unless LAB_KEEP=1; reuses a running one.
lab-bench: deps build testbin labbin multus helm whereabouts
	$(BIN)/kube-ipam-lab bench

lab-down:
	@test -x $(BIN)/kube-ipam-lab || $(MAKE) --no-print-directory build
	$(BIN)/kube-ipam-lab down

# Every test: unit, integration against a real etcd and a real control plane,
# network-namespace tests (root; they skip with a message otherwise, and fail
# when CI is set).
test: build vet fmt-check testbin labbin multus helm
	KUBE_IPAM_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 30m ./...

# Pure-logic tests only (no etcd, no API server, no root, no other process):
# the packages whose tests need nothing, then, by name, the pure tests of
# packages that also hold integration tests (none of those honours -short):
# the allocator's strategy over the in-memory store (TestStrategy*), kube-multus's
# config and Kubernetes-mode call flow (fake delegates and API), kube-tier's
# config and decisions, the plugin's TestUnit*, the GC rules, the store's
# watchdog judgement.
unit:
	$(GO) test -count=1 ./internal/config/ ./internal/ipam/ ./internal/pod/ ./internal/pki/ ./internal/install/ ./internal/oci/ \
		./internal/lab/ ./internal/store/memstore/ ./internal/store/storetest/ ./internal/netattach/ ./internal/cmdline/
	$(GO) test -count=1 -run '^TestStrategy' ./internal/allocator/
	$(GO) test -count=1 -run '^(TestParse|TestKubernetesMode|TestClusterNetworkModes)' ./internal/meta/
	$(GO) test -count=1 -run '^(TestParseChainedRefuses|TestChained|TestParseSource|TestConfigValidate|TestSelection|TestPolicyFor|TestRulesAsData)' ./internal/tier/
	$(GO) test -count=1 -run '^TestUnit' ./internal/plugin/
	$(GO) test -count=1 -run '^(TestOwnerGone|TestOrdinalWanted|TestDecide|TestLookupsNeeded|TestSkipSummary|TestDesiredNetworks)' ./internal/controller/
	$(GO) test -count=1 -run '^(TestIsUnavailableAndRefused|TestJudge)$$' ./internal/store/

# Throughput and latency against host-local, and empty vs 99 % full pool;
# the Kubernetes API stores against whereabouts (see bench/README.md).
bench: build testbin whereabouts
	KUBE_IPAM_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/

clean:
	rm -rf $(BIN) $(CURDIR)/dist
