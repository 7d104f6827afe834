#!/usr/bin/env bash
# Builds helm (module helm.sh/helm/v4, the version pinned below) from the Go
# module proxy into a cache directory outside the repository, statically
# (CGO_ENABLED=0, as upstream's release build), for test/chart (lint,
# template, install, upgrade, uninstall against a real kube-apiserver) and
# the lab (which installs kube-ipam with charts/kube-ipam):
#
#   <dir>/helm
#
# Idempotent: a build with a matching stamp is reused (about 0.1 s).
#
#   hack/helm.sh          # progress on stderr, the directory on stdout
#   KUBE_IPAM_HELM=/some/dir hack/helm.sh
#
# helm's go.mod has no replace directive, so a plain `go install` of
# ./cmd/helm at the pinned version works, with upstream's own go.sum; the
# -X flag sets the version `helm version` prints (upstream's Makefile does
# the same).
set -euo pipefail

HELM_VERSION=v4.3.2
MODULE=helm.sh/helm/v4
DIR=${KUBE_IPAM_HELM:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-ipam/helm-$HELM_VERSION}
STAMP="$DIR/.stamp"
WANT_STAMP="$MODULE $HELM_VERSION CGO_ENABLED=0"
LOG_NAME=helm
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

built() { [ -x "$DIR/helm" ] && stamped "$STAMP" "$WANT_STAMP"; }

need go
lock_cache
built && up_to_date "$MODULE $HELM_VERSION"

# Nothing here may touch the caller's module or workspace.
export GOWORK=off GOTOOLCHAIN=local GOFLAGS=
START=$SECONDS
scratch
log "building helm $HELM_VERSION (about two minutes cold) ..."
(cd "$TMP" && CGO_ENABLED=0 GOBIN="$TMP" go install -trimpath \
	-ldflags "-s -w -X $MODULE/internal/version.version=$HELM_VERSION" \
	"$MODULE/cmd/helm@$HELM_VERSION") || die "go install $MODULE/cmd/helm@$HELM_VERSION failed (see above)"
got=$("$TMP/helm" version --template '{{.Version}}' 2>&1) || die "the built helm does not run: $got"
[ "$got" = "$HELM_VERSION" ] || die "the built helm says version '$got', want $HELM_VERSION"
check_static "$TMP/helm"

rm -f "$STAMP"
mv -f "$TMP/helm" "$DIR/helm"
echo "$WANT_STAMP" >"$STAMP"
log "built in $((SECONDS - START))s"
echo "$DIR"
