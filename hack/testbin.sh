#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
# from the Go module proxy into a cache directory outside the repository, for
# internal/testenv (StartKube). Idempotent: a complete cache is reused.
#
#   hack/testbin.sh            # progress on stderr, the directory on stdout
#   KUBE_IPAM_TESTBIN=/some/dir hack/testbin.sh
#
# `go install k8s.io/kubernetes/cmd/...@v1.37.2` is refused because the
# kubernetes module replaces its staging modules (k8s.io/api, ...) with local
# paths, so this builds through a tools module that maps each of them to the
# matching published v0.X.Y version instead.
set -euo pipefail

K8S_VERSION=v1.37.2
STAGING_VERSION=v0.${K8S_VERSION#v1.}
CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
DIR=${KUBE_IPAM_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-ipam/testbin-k8s${K8S_VERSION#v}}
STAMP="$DIR/.stamp"
WANT_STAMP="k8s.io/kubernetes $K8S_VERSION ${CMDS[*]}"

log() { echo "testbin: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
OUT=
finish() {
	local rc=$?
	[ -z "$OUT" ] || rm -rf "$OUT"
	[ $rc -eq 0 ] || log "FAILED (exit $rc); $DIR was left as it was"
}
trap finish EXIT

complete() {
	[ "$(cat "$STAMP" 2>/dev/null)" = "$WANT_STAMP" ] || return 1
	for c in "${CMDS[@]}"; do [ -x "$DIR/$c" ] || return 1; done
}

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$DIR" || die "cannot create $DIR"

# Serialise concurrent runs (e.g. two test jobs bootstrapping at once).
exec 9>"$DIR/.lock"
flock 9 || die "cannot lock $DIR/.lock"

if complete; then
	log "up to date: ${CMDS[*]} $K8S_VERSION"
	echo "$DIR"
	exit 0
fi

# Keep the tools module from touching the caller's module or workspace.
export GOWORK=off GOTOOLCHAIN=local
START=$SECONDS
TOOLS="$DIR/tools-module"
mkdir -p "$TOOLS"
cd "$TOOLS"

log "downloading k8s.io/kubernetes@$K8S_VERSION module metadata"
json=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION") || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed: $json"
gomod=$(jq -r .GoMod <<<"$json")
[ -f "$gomod" ] || die "no go.mod in 'go mod download' output: $json"

# Every module kubernetes replaces with ./staging/... becomes its published
# counterpart at the staging version.
mapfile -t staging < <(go mod edit -json "$gomod" | jq -r '.Replace[] | select(.New.Path | startswith("./staging/")) | .Old.Path')
[ ${#staging[@]} -gt 0 ] || die "found no staging replacements in $gomod"
{
	echo "module kube-ipam-testbin-tools"
	echo
	echo "go 1.26.8"
	echo
	echo "require k8s.io/kubernetes $K8S_VERSION"
	echo
	echo "replace ("
	for m in "${staging[@]}"; do echo "	$m => $m $STAGING_VERSION"; done
	echo ")"
} >go.mod
rm -f go.sum
log "tools module with ${#staging[@]} staging replacements at $STAGING_VERSION in $TOOLS"

pkgs=()
for c in "${CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
log "resolving dependencies (go get -tool ${CMDS[*]})"
go get -tool "${pkgs[@]/%/@$K8S_VERSION}" || die "go get -tool failed"

v=k8s.io/component-base/version
LD="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION")"
LD+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
LD+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" # kubectl's client version

# Build into a scratch directory and move into place at the end, so an
# interrupted build never leaves a half-filled cache that looks complete.
OUT=$(mktemp -d "$DIR/.build.XXXXXX")
hint=" (about 10 minutes cold on an idle 2-core machine)"
for c in "${CMDS[@]}"; do
	t0=$SECONDS
	log "building $c $K8S_VERSION ...$hint"
	go build -trimpath -ldflags "$LD" -o "$OUT/$c" "k8s.io/kubernetes/cmd/$c" ||
		die "go build $c failed (see output above)"
	log "built $c in $((SECONDS - t0))s"
	hint=" (about 2 minutes cold)"
done
"$OUT/kube-apiserver" --version | grep -qx "Kubernetes $K8S_VERSION" ||
	die "kube-apiserver reports '$("$OUT/kube-apiserver" --version)', want Kubernetes $K8S_VERSION"

rm -f "$STAMP"
for c in "${CMDS[@]}"; do mv -f "$OUT/$c" "$DIR/$c"; done
echo "$WANT_STAMP" >"$STAMP"
log "done in $((SECONDS - START))s"
echo "$DIR"
