#!/usr/bin/env bash
# Installs the Debian packages `make image` and `make image-test` need (nothing if all are there):
# mmdebstrap and qemu-user-static build the arm64 root, device-tree-compiler builds and checks the
# board overlay, fdisk/dosfstools/mtools/e2fsprogs assemble the card without mounts, zstd, xz-utils
# and bmap-tools publish it, gcc-aarch64-linux-gnu builds lgpio's wheel, and qemu-system-arm 10 boots it: its raspi3b emulates the SPI and I2C
# controllers (7.2, bookworm's own, does not), so on a bookworm host it comes from backports.
set -euo pipefail
here=$(dirname "$0")
"$here/../tests/system-deps.sh" mmdebstrap qemu-user-static arch-test fdisk dosfstools mtools e2fsprogs \
    zstd xz-utils bmap-tools device-tree-compiler gcc-aarch64-linux-gnu libc6-dev-arm64-cross
qemu_major() { qemu-system-aarch64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'; }
if [ "$(qemu_major)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
    . /etc/os-release
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        echo "installing qemu-system-arm 10 from bookworm-backports"
        echo "deb http://deb.debian.org/debian bookworm-backports main" \
            | $sudo tee /etc/apt/sources.list.d/hyperpi-bookworm-backports.list >/dev/null
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-arm
    else
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-system-arm
    fi
    [ "$(qemu_major)" -ge 10 ] || { echo "deps.sh: qemu-system-aarch64 10 or newer is needed (have: $(qemu-system-aarch64 --version | head -1))" >&2; exit 1; }
fi
