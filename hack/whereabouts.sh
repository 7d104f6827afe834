#!/usr/bin/env bash
# Builds the whereabouts CNI IPAM plugin (github.com/k8snetworkplumbingwg/whereabouts,
# the Kubernetes-API IPAM that bench/kubestores_test.go compares kube-ipam
# with) from the Go module proxy into a cache directory outside the
# repository, statically (CGO_ENABLED=0, as upstream builds it), and copies
# the module's CustomResourceDefinitions (doc/crds/whereabouts.cni.cncf.io_*.yaml)
# beside it:
#
#   <dir>/whereabouts      the CNI binary (upstream's ./cmd package)
#   <dir>/crds/*.yaml      IPPool, NodeSlicePool, OverlappingRangeIPReservation
#
# Idempotent: a build with a matching stamp is reused (about 0.1 s).
#
#   hack/whereabouts.sh          # progress on stderr, the directory on stdout
#   KUBE_IPAM_WHEREABOUTS=/some/dir hack/whereabouts.sh
#
# `go install github.com/k8snetworkplumbingwg/whereabouts/cmd@version` is
# refused (its go.mod has a replace directive), so this builds inside a copy of
# the module as downloaded, with its own go.mod and go.sum: the same
# dependency versions as upstream's release build.
set -euo pipefail

WHEREABOUTS_VERSION=v0.9.2
MODULE=github.com/k8snetworkplumbingwg/whereabouts
DIR=${KUBE_IPAM_WHEREABOUTS:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-ipam/whereabouts-$WHEREABOUTS_VERSION}
STAMP="$DIR/.stamp"
WANT_STAMP="$MODULE $WHEREABOUTS_VERSION CGO_ENABLED=0 crds"
LOG_NAME=whereabouts
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

built() {
	[ -x "$DIR/whereabouts" ] && compgen -G "$DIR/crds/*.yaml" >/dev/null &&
		stamped "$STAMP" "$WANT_STAMP"
}

need go
need jq "(apt-get install jq)"
lock_cache
built && up_to_date "$MODULE $WHEREABOUTS_VERSION"

# Nothing here may touch the caller's module or workspace.
export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
START=$SECONDS
scratch
module_copy "$MODULE" "$WHEREABOUTS_VERSION" go.mod cmd/whereabouts.go

log "building whereabouts $WHEREABOUTS_VERSION (about a minute cold) ..."
v=$MODULE/pkg/version
(cd "$TMP/src" && CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X $v.Version=$WHEREABOUTS_VERSION -X $v.ReleaseStatus=released" \
	-o "$TMP/whereabouts" ./cmd/) || die "go build ./cmd/ failed (see above)"
# Without CNI_COMMAND a CNI plugin prints its about text.
about=$(CNI_COMMAND= "$TMP/whereabouts" 2>&1 || true)
[[ "$about" == *"whereabouts $WHEREABOUTS_VERSION "* ]] ||
	die "the built binary says '$about', want whereabouts $WHEREABOUTS_VERSION"
check_static "$TMP/whereabouts"

mkdir -p "$TMP/crds"
shopt -s nullglob
crds=("$TMP/src"/doc/crds/whereabouts.cni.cncf.io_*.yaml)
[ ${#crds[@]} -gt 0 ] || die "no doc/crds/whereabouts.cni.cncf.io_*.yaml in the module"
cp "${crds[@]}" "$TMP/crds/"

rm -f "$STAMP"
rm -rf "$DIR/crds"
mv -f "$TMP/whereabouts" "$DIR/whereabouts"
mv "$TMP/crds" "$DIR/crds"
echo "$WANT_STAMP" >"$STAMP"
log "built in $((SECONDS - START))s: $(ls "$DIR/crds" | tr '\n' ' ')"
echo "$DIR"
