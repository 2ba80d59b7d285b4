#!/bin/sh
# mmdebstrap --customize-hook: runs once all packages are installed; $1 is the new root.
# Applies the image's own files (image/rootfs), the service user, hardening, and builds the
# initramfs once. Everything here is Debian-package-level state, cached with the rootfs.
set -eu
root="$1"
here=$(dirname "$(readlink -f "$0")")
in_root() { chroot "$root" "$@"; }

# The service user: fixed uid/gid 900 (below the ids Debian's packages take dynamically from 999
# down; 990 is systemd-resolve's on trixie) so `hyperpi provision` can own secret files without
# reading the image's /etc/passwd. Keep in sync with SERVICE_UID in host/hyperpi_host/provisioning.py.
in_root groupadd --system --gid 900 hyperpi
for g in gpio spi i2c; do in_root getent group "$g" >/dev/null || in_root groupadd --system "$g"; done
in_root useradd --system --uid 900 --gid hyperpi --groups gpio,spi,i2c,video \
    --home-dir /var/lib/hyperpi --no-create-home --shell /usr/sbin/nologin hyperpi
install -d -m 0700 -o 900 -g 900 "$root/var/lib/hyperpi"
install -d -m 0755 "$root/etc/hyperpi" "$root/boot/firmware"
# The settings live on the FAT partition, where `hyperpi provision` writes them without root.
ln -sf /boot/firmware/hyperpi/device.toml "$root/etc/hyperpi/device.toml"

# No default password anywhere: root is locked; login is by SSH key only, and SSH is off.
in_root passwd --lock root >/dev/null

# The image's own files.
cp -a --no-preserve=ownership "$here/../rootfs/." "$root/"

# SSH host keys are made per card on first boot (hyperpi-ssh-keygen.service), never shipped.
rm -f "$root"/etc/ssh/ssh_host_*
in_root systemctl disable --quiet ssh.service ssh.socket 2>/dev/null || true
in_root systemctl enable --quiet systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service hyperpi-ssh-keygen.service hyperpi-growfs.service
# (wpa_supplicant@wlan0 is started by udev when wlan0 appears: etc/udev/rules.d/60-hyperpi.rules.)
# A machine-id per card, made on first boot (an empty file tells systemd to make one).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# lgpio, gpiozero's pin backend on Debian's kernel (GPIO character device): PyPI has no wheel for
# Debian 13's Python 3.13 on arm64, so build one from the pinned sdist with this host's cross
# compiler (not under emulation). Stage 2 installs it from /opt/hyperpi/wheels.
python3 "$here/lgpio_wheel.py" "$root"

# depmod back (see essential.sh): slim.py runs this host's depmod, and kernel upgrades need it.
rm -f "$root/usr/sbin/depmod"
in_root dpkg-divert --quiet --local --rename --remove /usr/sbin/depmod

# Down to what the supported boards use: kernel modules (image/kernel-modules.txt), Wi-Fi
# firmware (image/wifi-firmware.txt), caches. It also writes the initramfs's module list.
python3 "$here/../slim.py" "$root"

# The initramfs, once (see essential.sh). zstd: fast to make under emulation and to unpack on a Pi.
# MODULES=list: only what mounting the root from the SD card needs (slim.py wrote the list), not
# the generic kernel's `most`, which took ~10 minutes under emulation and ~30 MB on each copy.
rm -f "$root/usr/sbin/update-initramfs"
in_root dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
sed -i 's/^#\?COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
in_root update-initramfs -c -k all
