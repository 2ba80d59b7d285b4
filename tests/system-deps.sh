#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (iproute2 for the network-namespace LAN,
# fonts-dejavu-core for the device's colour screens and their golden frames).
# Called by `make test`; it does nothing when everything is already there.
set -euo pipefail
packages=(iproute2 fdisk dosfstools mtools e2fsprogs fonts-dejavu-core util-linux kmod bmap-tools xz-utils zstd)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
