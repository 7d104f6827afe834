# syntax=docker/dockerfile:1
#
# kube-ipam image: every binary in /kube-ipam/bin.
#
#   docker build -t <registry>/kube-ipam:<tag> --build-arg VERSION=<tag> \
#     --build-arg REVISION=$(git rev-parse HEAD) .
#
# `make release` writes the same image for linux/amd64 and linux/arm64 as an
# OCI archive without Docker (docs/release.md).
#
# One image serves both deploy/ workloads:
#   - the kube-ipam-node DaemonSet runs /kube-ipam/bin/kube-ipam-install (the
#     default entrypoint), which copies kube-ipam-direct (the whole plugin),
#     then kube-ipam (the small plugin process the runtime runs: it hands the
#     call to the node agent, or execs kube-ipam-direct beside it), kube-multus
#     (also as multus-cni) and kube-tier onto the node, and runs the node
#     agent (--agent-socket). It needs root for the node's /opt/cni/bin,
#     /etc/cni/net.d and /run/kube-ipam: the DaemonSet sets runAsUser: 0 in
#     its securityContext; the image itself stays non-root (USER 65532 of the
#     distroless base);
#   - the kube-ipam-controller Deployment runs /kube-ipam/bin/kube-ipam-controller
#     as that non-root user. kube-ipamctl is there for `kubectl exec`.
#
# The plugins are static (CGO_ENABLED=0), so they run on any node whatever
# its libc. Multi-arch: docker buildx build --platform linux/amd64,linux/arm64
# (cross-compiled on the build platform, no emulation).
#
# Bases are pinned by tag; for reproducible builds also pin their digests
# (docker buildx imagetools inspect <image>) as <image>@sha256:<digest>.

FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY cmd/ cmd/
COPY internal/ internal/
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X kubeipam/internal/version.Version=${VERSION}" \
      -o /out/ ./cmd/kube-ipam-direct ./cmd/kube-ipam ./cmd/kube-multus ./cmd/kube-tier ./cmd/kube-ipamctl ./cmd/kube-ipam-controller ./cmd/kube-ipam-install

FROM gcr.io/distroless/static-debian12:nonroot
# The labels of make release's image (internal/release.Labels; a test
# holds the two to the same set).
ARG VERSION=dev
ARG REVISION=
LABEL org.opencontainers.image.title="kube-ipam" \
      org.opencontainers.image.description="kube-ipam CNI IPAM plugin, kube-multus, kube-tier, controller, node installer and kube-ipamctl" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /kube-ipam/bin/
ENV PATH=/kube-ipam/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 65532:65532
ENTRYPOINT ["/kube-ipam/bin/kube-ipam-install"]
