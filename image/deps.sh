#!/usr/bin/env bash
# Installs the Debian packages `make image` and `make image-test` need (nothing if all are there):
# mmdebstrap and qemu-user-static build the arm64 root, fdisk/dosfstools/mtools/e2fsprogs
# assemble the card without mounts, xz-utils and bmap-tools publish it, qemu-system-arm boots it.
set -euo pipefail
exec "$(dirname "$0")/../tests/system-deps.sh" mmdebstrap qemu-user-static arch-test fdisk dosfstools \
    mtools e2fsprogs xz-utils bmap-tools qemu-system-arm
