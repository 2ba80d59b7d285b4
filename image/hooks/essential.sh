#!/bin/sh
# mmdebstrap --essential-hook: runs after the Essential packages, before the rest are installed.
# Every kernel, firmware and udev package triggers update-initramfs, and under qemu-user each run
# takes minutes; divert it to a no-op now and build the initramfs once in customize.sh.
set -eu
root="$1"
chroot "$root" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\necho "update-initramfs: deferred by the hyperpi image build"\n' > "$root/usr/sbin/update-initramfs"
chmod 755 "$root/usr/sbin/update-initramfs"
