#!/usr/bin/env bash
# Builds upstream multus-cni (module gopkg.in/k8snetworkplumbingwg/multus-cni.v4,
# the meta plugin test/upstream runs kube-ipam under) from the Go module
# proxy into a cache directory outside the repository, statically
# (CGO_ENABLED=0, as upstream's hack/build-go.sh builds it):
#
#   <dir>/multus          the thin plugin (./cmd/multus)
#   <dir>/multus-shim     the thick plugin's CNI binary (./cmd/multus-shim)
#   <dir>/multus-daemon   the thick plugin's node daemon (./cmd/multus-daemon)
#
# Idempotent: a build with a matching stamp is reused (about 0.1 s).
#
#   hack/multus.sh          # progress on stderr, the directory on stdout
#   KUBE_IPAM_MULTUS=/some/dir hack/multus.sh
#
# `go install gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus@v4.2.4`
# is refused (the proxy answers 403 for the module's version list, which
# go install reads for deprecations), so this builds inside a copy of the
# module as downloaded, with its own go.mod and go.sum: the same dependency
# versions as upstream's release build.
set -euo pipefail

MULTUS_VERSION=v4.2.4
MODULE=gopkg.in/k8snetworkplumbingwg/multus-cni.v4
DIR=${KUBE_IPAM_MULTUS:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-ipam/multus-$MULTUS_VERSION}
STAMP="$DIR/.stamp"
BINS=(multus multus-shim multus-daemon)
WANT_STAMP="$MODULE $MULTUS_VERSION CGO_ENABLED=0 ${BINS[*]}"
LOG_NAME=multus
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

built() {
	local b
	for b in "${BINS[@]}"; do
		[ -x "$DIR/$b" ] || return 1
	done
	stamped "$STAMP" "$WANT_STAMP"
}

need go
need jq "(apt-get install jq)"
lock_cache
built && up_to_date "$MODULE $MULTUS_VERSION"

# Nothing here may touch the caller's module or workspace.
export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
START=$SECONDS
scratch
mains=()
for b in "${BINS[@]}"; do mains+=("cmd/$b/main.go"); done
module_copy "$MODULE" "$MULTUS_VERSION" go.mod "${mains[@]}"
commit=$(jq -r '.Origin.Hash // empty' <<<"$json")
date=$(jq -r '.Time // empty' "$(jq -r .Info <<<"$json")")

log "building ${BINS[*]} $MULTUS_VERSION (about 2 minutes cold) ..."
# The version variables upstream's hack/build-go.sh sets, with the tag's
# commit and date from the proxy instead of a git checkout.
v=$MODULE/pkg/multus
mkdir -p "$TMP/out"
(cd "$TMP/src" && CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X $v.version=$MULTUS_VERSION -X $v.commit=$commit -X $v.gitTreeState=clean \
		-X $v.releaseStatus=,released -X $v.date=$date" \
	-o "$TMP/out/" "${BINS[@]/#/./cmd/}") || die "go build failed (see above)"
for b in "${BINS[@]}"; do
	out=$("$TMP/out/$b" -version 2>&1 || true)
	[[ "$out" == "$b: version:$MULTUS_VERSION("* ]] ||
		die "the built $b says '$out', want $b: version:$MULTUS_VERSION"
	check_static "$TMP/out/$b"
done

rm -f "$STAMP"
for b in "${BINS[@]}"; do
	mv -f "$TMP/out/$b" "$DIR/$b"
done
echo "$WANT_STAMP" >"$STAMP"
log "built in $((SECONDS - START))s: ${BINS[*]}"
echo "$DIR"
