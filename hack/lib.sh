# Shared by the hack/*.sh scripts that build pinned tools from the Go module
# proxy into a cache directory outside the repository (testbin.sh, labbin.sh,
# whereabouts.sh, multus.sh). Sourced, never run. The script sets LOG_NAME
# (the prefix of its stderr lines) before sourcing and DIR (its cache
# directory) before calling any function here.
#
# Every script keeps the same contract: progress on stderr, the cache
# directory on stdout, a build in a scratch directory under $DIR moved into
# place at the end, so an interrupted build never leaves a half-filled cache
# that looks complete.

log() { echo "$LOG_NAME: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# TMP is the scratch directory of the build under way (scratch sets it); it
# is removed however the script ends.
TMP=
finish() {
	local rc=$?
	[ -z "$TMP" ] || rm -rf "$TMP"
	[ $rc -eq 0 ] || log "FAILED (exit $rc); $DIR was left as it was"
}
trap finish EXIT

# need <command> [hint]: dies unless command is on PATH.
need() { command -v "$1" >/dev/null || die "$1 is not on PATH${2:+ $2}"; }

# lock_cache creates $DIR and holds its lock (fd 9) until the script ends:
# concurrent runs (two test jobs bootstrapping at once) build once.
lock_cache() {
	mkdir -p "$DIR" || die "cannot create $DIR"
	exec 9>"$DIR/.lock"
	flock 9 || die "cannot lock $DIR/.lock"
}

# stamped <stamp file> <want>: the stamp says want.
stamped() { [ "$(cat "$1" 2>/dev/null)" = "$2" ]; }

# up_to_date <what>: says so, prints $DIR and ends the script.
up_to_date() {
	log "up to date: $*"
	echo "$DIR"
	exit 0
}

# scratch makes a new scratch directory in $DIR as $TMP.
scratch() { TMP=$(mktemp -d "$DIR/.build.XXXXXX"); }

# module_copy <module> <version> <file>...: downloads module@version through
# the proxy (go mod download's JSON in $json, the module cache's directory in
# $src), checks that it has every file named, and copies it to $TMP/src,
# writable (the module cache is read-only), to build inside it with its own
# go.mod and go.sum: the same dependency versions as upstream's release build.
module_copy() {
	local module=$1 version=$2 f
	shift 2
	log "downloading $module@$version"
	json=$(cd "$TMP" && go mod download -json "$module@$version") ||
		die "go mod download $module@$version failed: $json"
	src=$(jq -r .Dir <<<"$json")
	for f in "$@"; do
		[ -f "$src/$f" ] || die "no $f in the module as downloaded ($src)"
	done
	cp -r "$src" "$TMP/src"
	chmod -R u+w "$TMP/src"
}

# check_static <binary>: dies if file(1) is there and says the binary is
# linked dynamically.
check_static() {
	if command -v file >/dev/null && ! file "$1" | grep -q 'statically linked'; then
		die "the built $(basename "$1") is not static: $(file "$1")"
	fi
}
