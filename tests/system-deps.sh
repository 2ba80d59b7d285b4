#!/usr/bin/env bash
# Installs Debian packages that are missing (nothing when all are there). With no arguments:
# the packages the test suite needs (called by `make test`): iproute2 for the network-namespace
# LAN, fdisk/dosfstools/mtools/e2fsprogs for image files, util-linux/kmod/bmap-tools/xz-utils/zstd
# for flashing, fonts-dejavu-core for the device's colour screens and their golden frames, and
# the shell script linter for tests/unit/test_checks.py.
# With arguments: those packages (image/deps.sh uses it for the image build's tools).
set -euo pipefail
if [ $# -gt 0 ]; then
    packages=("$@")
else
    packages=(iproute2 fdisk dosfstools mtools e2fsprogs fonts-dejavu-core util-linux kmod bmap-tools xz-utils zstd shellcheck)
fi
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
