#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
# kubelet and kube-proxy from the Go module proxy into a cache directory
# outside the repository, for internal/testenv (StartKube) and the lab
# (internal/lab). Idempotent: binaries already built at this version are reused,
# only missing ones are built.
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
CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
DIR=${KUBE_IPAM_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-ipam/testbin-k8s${K8S_VERSION#v}}
# One stamp per binary: "<binary> k8s.io/kubernetes <version>". The stamp of
# earlier versions of this script (one line naming every binary) still counts.
OLD_STAMP="$DIR/.stamp"
stamp() { echo "$DIR/.stamp.$1"; }
want_stamp() { echo "$1 k8s.io/kubernetes $K8S_VERSION"; }

LOG_NAME=testbin
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

built() {
	[ -x "$DIR/$1" ] || return 1
	stamped "$(stamp "$1")" "$(want_stamp "$1")" && return 0
	local old
	old=$(cat "$OLD_STAMP" 2>/dev/null) || return 1
	[[ "$old" == "k8s.io/kubernetes $K8S_VERSION "* ]] && [[ " ${old#k8s.io/kubernetes $K8S_VERSION } " == *" $1 "* ]]
}

need go
lock_cache

# Again under the lock: another run may have built them meanwhile.
TODO=()
for c in "${CMDS[@]}"; do built "$c" || TODO+=("$c"); done
((${#TODO[@]})) || up_to_date "${CMDS[*]} $K8S_VERSION"

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

# Build into a scratch directory and move into place at the end.
scratch
hint=" (about 10 minutes cold on an idle 2-core machine)"
for c in "${TODO[@]}"; do
	t0=$SECONDS
	log "building $c $K8S_VERSION ...$hint"
	go build -trimpath -ldflags "$LD" -o "$TMP/$c" "k8s.io/kubernetes/cmd/$c" ||
		die "go build $c failed (see output above)"
	log "built $c in $((SECONDS - t0))s"
	hint=" (about 2 minutes cold)"
done
for c in "${TODO[@]}"; do
	[ "$c" = kubectl ] && continue # kubectl prints a client/server table
	"$TMP/$c" --version | grep -qx "Kubernetes $K8S_VERSION" ||
		die "$c reports '$("$TMP/$c" --version)', want Kubernetes $K8S_VERSION"
done

for c in "${TODO[@]}"; do
	rm -f "$(stamp "$c")"
	mv -f "$TMP/$c" "$DIR/$c"
	want_stamp "$c" >"$(stamp "$c")"
done
log "done in $((SECONDS - START))s"
echo "$DIR"
