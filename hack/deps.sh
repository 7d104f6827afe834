#!/usr/bin/env bash
# Installs the Debian 12 packages the tests and the lab need, if missing
# (CI, `make lab`). Run as root.
set -euo pipefail
packages=(
	etcd-server etcd-client containernetworking-plugins iproute2 nftables iputils-ping
	make git ca-certificates jq util-linux
	containerd runc busybox-static conntrack # the lab's nodes and images
	gcc libc6-dev                            # flanneld (cgo), hack/labbin.sh
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
	exit 1
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start no daemons here (no systemd); the tests and the lab run
# their own.
