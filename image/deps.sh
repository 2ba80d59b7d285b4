#!/usr/bin/env bash
# Installs the Debian packages `make image` and `make image-test` need (nothing if all are there):
# mmdebstrap and qemu-user-static build the arm64 root, fdisk/dosfstools/mtools/e2fsprogs
# assemble the card without mounts, xz-utils and bmap-tools publish it, qemu-system-arm boots it.
set -euo pipefail
packages=(mmdebstrap qemu-user-static arch-test fdisk dosfstools mtools e2fsprogs xz-utils bmap-tools qemu-system-arm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
