#!/usr/bin/env bash
# Builds the lab's cluster network, real flannel, from the Go module proxy
# into a cache directory outside the repository (internal/lab):
#   flanneld  github.com/flannel-io/flannel            (the node daemon, vxlan backend)
#   flannel   containernetworking/plugins meta/flannel (the CNI plugin of the seed's
#             cni-plugins v0.9.1; newer flannel CNI plugins are not on the proxy)
# Idempotent: built binaries with a matching stamp are reused.
#
#   hack/labbin.sh          # progress on stderr, the directory on stdout
#   KUBE_IPAM_LABBIN=/some/dir hack/labbin.sh
set -euo pipefail

FLANNEL_VERSION=v0.26.7
CNI_PLUGINS_VERSION=v0.9.1
DIR=${KUBE_IPAM_LABBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-ipam/labbin}
LOG_NAME=labbin
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need go
lock_cache

export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
# build <binary> <package@version> <cgo 0|1>
build() {
	local bin=$1 pkg=$2 cgo=$3 stamp="$DIR/.stamp.$1"
	if [ -x "$DIR/$bin" ] && stamped "$stamp" "$pkg"; then
		log "up to date: $bin ($pkg)"
		return
	fi
	local t0=$SECONDS
	scratch
	log "building $bin from $pkg (about a minute cold) ..."
	# A scratch module: `go install pkg@version` uses the package's own go.mod.
	(cd "$TMP" && CGO_ENABLED=$cgo GOBIN="$TMP" go install -trimpath -ldflags "-s -w" "$pkg") ||
		die "go install $pkg failed (see above)"
	mv -f "$TMP/$(basename "${pkg%@*}")" "$DIR/$bin"
	rm -rf "$TMP"
	TMP=
	echo "$pkg" >"$stamp"
	log "built $bin in $((SECONDS - t0))s"
}
# flanneld needs cgo (its udp backend); it runs on the host, so glibc is fine.
build flanneld "github.com/flannel-io/flannel@$FLANNEL_VERSION" 1
build flannel "github.com/containernetworking/plugins/plugins/meta/flannel@$CNI_PLUGINS_VERSION" 0
echo "$DIR"
