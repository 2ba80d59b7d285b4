#!/bin/sh
# mmdebstrap --essential-hook: runs after the Essential packages, before the rest are installed.
# Every kernel, firmware and udev package triggers update-initramfs, and under qemu-user each run
# takes minutes; divert it to a no-op now and build the initramfs once in customize.sh. The same
# for depmod (~45 s emulated for the kernel's 4,000 modules): slim.py runs this host's depmod on
# the modules the image keeps.
set -eu
root="$1"
for tool in update-initramfs depmod; do
    chroot "$root" dpkg-divert --quiet --local --rename --add "/usr/sbin/$tool"
    printf '#!/bin/sh\necho "%s: deferred by the hyperpi image build"\n' "$tool" > "$root/usr/sbin/$tool"
    chmod 755 "$root/usr/sbin/$tool"
done
