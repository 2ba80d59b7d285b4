#!/usr/bin/env bash
# Builds the hyperpi SD card image (Debian 13 trixie arm64 for the Raspberry Pi 3B/3B+/4B, Zero 2 W).
#
#   image/build.sh            (or `make image`)
#
# Outputs in build/: hyperpi-<version>-arm64.img (raw, for tests), .img.bmap, SHA256SUMS, and the
# packed image: .img.zst by default (seconds to make: a local build), or .img.xz with
# HYPERPI_COMPRESS=xz (`make image-release`: ~20% smaller, what a release ships; ~2 min on 2 cores).
#
# Two stages:
#  1. The Debian layer: mmdebstrap (variant minbase) with image/packages.txt, image/hooks/ and
#     image/rootfs/, slimmed by image/slim.py to the kernel modules (image/kernel-modules.txt)
#     and Wi-Fi firmware (image/wifi-firmware.txt) the supported boards use. Cached in
#     build/cache/rootfs-<key>/, where <key> hashes exactly those inputs, so a rebuild with
#     unchanged packages skips it (the slow part: dpkg under emulation); each build works on a
#     copy of it.
#  2. hyperpi itself: a wheel of this checkout installed into a venv in the image
#     (/opt/hyperpi/venv, seeing Debian's python3 packages), the board overlay
#     (image/overlay/hyperpi.dts, checked against every Pi DTB), the Wi-Fi firmware check
#     (image/wifi-firmware.txt), then assembly.
#
# Assembly uses no loop devices and no mounts: sfdisk writes the MBR into a sparse file,
# mkfs.vfat + mtools make the FAT32 boot partition in a file of its own, mke2fs -d makes the
# ext4 root from a folder, and dd places both.
#
# Needs: root (dpkg in the new root must chown files; mmdebstrap bind-mounts /proc, /sys and /dev
# into that root while packages install, but the image itself is never mounted),
# mmdebstrap, device-tree-compiler (dtc, fdtoverlay), qemu-user-static with binfmt_misc (to run arm64 maintainer scripts on this host;
# the script registers qemu-aarch64 itself when binfmt_misc is available), fdisk (sfdisk),
# dosfstools, mtools, e2fsprogs, zstd, xz-utils, bmap-tools, gcc-aarch64-linux-gnu (lgpio's wheel:
# image/hooks/lgpio_wheel.py), and network access to the Debian mirror
# and PyPI. image/deps.sh installs the Debian packages (`make image` runs it).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD=${HYPERPI_BUILD_DIR:-$REPO/build}
CACHE=$BUILD/cache
WORK=$BUILD/work
SUITE=trixie
MIRROR=${HYPERPI_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${HYPERPI_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Layout. The disk id names the partitions in fstab and cmdline.txt (PARTUUID=68797069-0N);
# provisioning and the boot test find partitions from the MBR, not from these numbers.
DISK_ID=0x68797069
ALIGN_MIB=4          # first partition at 4 MiB: erase-block aligned on SD cards
BOOT_MIB=256         # kernel + initrd (~40 MB) twice over during a kernel upgrade, plus firmware
# FAT32 needs at least 65,525 clusters or tools treat it as FAT16: with 1 KiB clusters
# (2 sectors) a 256 MiB partition has ~260,000.
FAT_SECTORS_PER_CLUSTER=2
ROOT_FREE_MIB=256    # free space in the root fs as shipped; it grows to the card on first boot
ROOT_UUID=68797069-7079-4000-8000-000000000002
VENV=/opt/hyperpi/venv
COMPRESS=${HYPERPI_COMPRESS:-zst}

log() { printf '\n== %s: %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

python_bin() {
    if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"; else echo python3; fi
}

preflight() {
    case $COMPRESS in zst | xz) ;; *) die "HYPERPI_COMPRESS=$COMPRESS: use zst (a local build) or xz (a release)" ;; esac
    [ "$(id -u)" -eq 0 ] || die "run as root: dpkg inside the new root must set file owners (the image is never mounted)"
    local missing=()
    for tool in mmdebstrap dtc fdtoverlay fdtget sfdisk mkfs.vfat mcopy mmd mke2fs zstd xz bmaptool sha256sum qemu-aarch64-static aarch64-linux-gnu-gcc; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]}; on Debian: apt-get install mmdebstrap device-tree-compiler qemu-user-static fdisk dosfstools mtools e2fsprogs zstd xz-utils bmap-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    setup_binfmt
}

# arm64 maintainer scripts run on this host through qemu-aarch64-static, which the kernel starts
# for arm64 ELF files via binfmt_misc. The F (fix binary) flag lets it work inside the chroot
# without copying qemu into the image. Containers often lack binfmt_misc: then run on a host
# (or VM) where `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` works.
setup_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null \
            || die "binfmt_misc is not available and cannot be mounted at $dir (a container without it?); arm64 packages cannot be configured here"
    fi
    if [ ! -e "$dir/qemu-aarch64" ]; then
        local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [ -r "$conf" ] || die "$conf missing: install qemu-user-static"
        cat "$conf" > "$dir/register" || die "cannot register qemu-aarch64 with binfmt_misc"
    fi
    grep -q '^flags: .*F' "$dir/qemu-aarch64" \
        || die "qemu-aarch64 is registered without the F flag; re-register it from /usr/lib/binfmt.d/qemu-aarch64.conf"
}

packages() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/packages.txt" | tr -d ' \t' | paste -sd, -; }

# The Debian layer's cache key: every input of stage 1 (package list, hooks, the image's own
# files with their modes, the mmdebstrap call itself), and the suite. Not the mirror: the same
# suite gives the same layer.
cache_key() {
    (
        cd "$HERE"
        echo "$SUITE"
        declare -f build_debian_layer
        find packages.txt hooks rootfs slim.py kernel-modules.txt wifi-firmware.txt -type f -o -type l \
            | LC_ALL=C sort | while read -r f; do
            echo "$f $(stat -c %a "$f")"
            if [ -L "$f" ]; then readlink "$f"; else sha256sum < "$f"; fi
        done
    ) | sha256sum | cut -c1-16
}

# Lazily unmount everything mounted below a folder (deepest first).
unmount_below() {
    local mounts
    mounts=$(findmnt -rn -o TARGET | grep "^$1/" | sort -r || true)
    [ -z "$mounts" ] || { echo "build.sh: unmounting what was left mounted in $1: $mounts" >&2; echo "$mounts" | xargs -r -n1 umount -l; }
}

build_debian_layer() {
    local dir=$1
    log "stage 1: Debian layer with mmdebstrap -> $dir"
    mkdir -p "$CACHE"
    rm -rf "$CACHE"/rootfs-*.partial
    # path-exclude: manuals, docs (but not copyright) and translations are dead weight on a card,
    # and so are the DTBs of every other SoC family the arm64 kernel supports (~55 MB); the rules
    # stay in the image (/etc/dpkg/dpkg.cfg.d/), so kernel upgrades leave them out too.
    mmdebstrap --variant=minbase --architectures=arm64 \
        --components=main,non-free-firmware \
        --include="$(packages)" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/lib/linux-image-*/*' \
        --dpkgopt='path-include=/usr/lib/linux-image-*/broadcom/bcm27*' \
        --dpkgopt='path-include=/usr/lib/linux-image-*/broadcom/bcm28*' \
        --aptopt='Acquire::Retries "3"' \
        --essential-hook="\"$HERE/hooks/essential.sh\" \"\$1\"" \
        --customize-hook="\"$HERE/hooks/customize.sh\" \"\$1\"" \
        --format=directory "$SUITE" "$dir.partial" \
        "deb $MIRROR $SUITE main non-free-firmware" \
        "deb $MIRROR $SUITE-updates main non-free-firmware" \
        "deb $SECURITY_MIRROR $SUITE-security main non-free-firmware"
    mv "$dir.partial" "$dir"
    # Keep only the newest layer: each is ~1 GB.
    find "$CACHE" -mindepth 1 -maxdepth 1 -name 'rootfs-*' ! -name "$(basename "$dir")" -exec rm -rf {} +
}

install_hyperpi() {
    local rootfs=$1 version=$2
    log "stage 2: hyperpi $version into $VENV"
    rm -rf "$WORK/wheels"
    "$(python_bin)" -m pip wheel --quiet --no-deps -w "$WORK/wheels" "$REPO"
    local wheel
    wheel=$(ls "$WORK"/wheels/hyperpi-*.whl)
    cp "$wheel" "$rootfs/tmp/"
    # pip inside the image fetches from PyPI what Debian lacks (or packages too old): it needs
    # DNS and the CAs this host trusts (a TLS-inspecting proxy's CA may be among them). It runs
    # with a clean environment, so the host's pip settings (find-links, constraints) stay out.
    local resolv="$rootfs/etc/resolv.conf" saved="" ca=/tmp/hyperpi-build-ca.crt
    if [ -L "$resolv" ] || [ -e "$resolv" ]; then saved=$(mktemp -p "$WORK"); mv "$resolv" "$saved"; fi
    cp /etc/resolv.conf "$resolv"
    cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$rootfs$ca"
    local clean_env=(env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8
                     "PIP_CERT=$ca" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 PIP_NO_CACHE_DIR=1)
    chroot "$rootfs" "${clean_env[@]}" python3 -m venv --system-site-packages "$VENV"
    # --find-links: the lgpio wheel built with the Debian layer (hooks/lgpio_wheel.py). The `device`
    # extra only: the host tool's QR reader and zstd support stay off the card (pyproject.toml).
    chroot "$rootfs" "${clean_env[@]}" "$VENV/bin/pip" install --quiet --find-links /opt/hyperpi/wheels \
        "/tmp/$(basename "$wheel")[device]"
    chroot "$rootfs" "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("lgpio") >= "0.2.2"' \
        || die "the image's venv has no working lgpio >= 0.2.2"
    rm -f "$resolv" "$rootfs$ca" "$rootfs/tmp/$(basename "$wheel")"
    if [ -n "$saved" ]; then mv "$saved" "$resolv"; fi
    ln -sf "$VENV/bin/hyperpi-device" "$rootfs/usr/local/bin/hyperpi-device"
    ln -sf "$VENV/bin/hyperpi" "$rootfs/usr/local/bin/hyperpi"
    ln -sf "$VENV/bin/hyperpi-launch" "$rootfs/usr/local/bin/hyperpi-launch"  # the unit's ExecStart
    install_service "$rootfs"
    echo "hyperpi $version" > "$rootfs/etc/hyperpi-release"
}

# The service unit comes with the service (firmware/); image/service/ adds the image's drop-ins.
install_service() {
    local rootfs=$1
    install -m 0644 "$REPO/firmware/hyperpi-device.service" "$rootfs/etc/systemd/system/hyperpi-device.service"
    install -d "$rootfs/etc/systemd/system/hyperpi-device.service.d"
    install -m 0644 "$HERE"/service/*.conf "$rootfs/etc/systemd/system/hyperpi-device.service.d/"
    chroot "$rootfs" systemctl enable --quiet hyperpi-device.service
}

# The newest kernel version in a root folder (its /boot/vmlinuz-VERSION).
kernel_version() { find "$1/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -1; }

# config.txt and cmdline.txt as raspi-firmware's hooks write them on the device, in case the
# hooks did not run in the chroot.
boot_files() {
    local rootfs=$1 fw=$1/boot/firmware kver
    kver=$(kernel_version "$rootfs")
    [ -n "$kver" ] || die "no kernel in the image"
    if [ ! -e "$fw/start.elf" ]; then cp -a "$rootfs/usr/lib/raspi-firmware/." "$fw/"; fi
    [ -e "$fw/vmlinuz-$kver" ] || cp "$rootfs/boot/vmlinuz-$kver" "$fw/"
    [ -e "$fw/initrd.img-$kver" ] || cp "$rootfs/boot/initrd.img-$kver" "$fw/"
    if ! ls "$fw"/bcm27*.dtb >/dev/null 2>&1; then
        cp "$rootfs/usr/lib/linux-image-$kver"/broadcom/bcm27*.dtb "$fw/"
    fi
    if [ ! -e "$fw/config.txt" ]; then
        cat > "$fw/config.txt" <<EOF
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel=vmlinuz-$kver
initramfs initrd.img-$kver
EOF
    fi
    if [ ! -e "$fw/cmdline.txt" ]; then
        echo "console=ttyS1,115200 console=tty0 root=PARTUUID=${DISK_ID#0x}-02 rw fsck.repair=yes net.ifnames=0 cma=64M rootwait" \
            > "$fw/cmdline.txt"
    fi
}

# The board overlay: compiled here, applied with fdtoverlay to every Pi DTB the image ships (the
# build fails if one does not take it), then put where the firmware's `dtoverlay=hyperpi` finds it.
# Pi DTBs: 3B, 3B+, 4B, Zero 2 W (the boards hyperpi supports) and their close kin in the package.
PI_DTBS="bcm2837-rpi-3-b bcm2837-rpi-3-b-plus bcm2837-rpi-3-a-plus bcm2711-rpi-4-b bcm2711-rpi-400 bcm2837-rpi-zero-2-w"
install_overlay() {
    local rootfs=$1 kver dtbs dtbo=$WORK/hyperpi.dtbo name merged
    kver=$(kernel_version "$rootfs")
    dtbs=$rootfs/usr/lib/linux-image-$kver/broadcom
    log "overlay: image/overlay/hyperpi.dts against the DTBs of $kver"
    dtc -q -@ -I dts -O dtb -o "$dtbo" "$HERE/overlay/hyperpi.dts" || die "image/overlay/hyperpi.dts does not compile"
    for name in $PI_DTBS; do
        [ -e "$dtbs/$name.dtb" ] || die "$name.dtb is missing from linux-image-$kver"
        merged=$WORK/$name-merged.dtb
        fdtoverlay -i "$dtbs/$name.dtb" -o "$merged" "$dtbo" || die "hyperpi.dtbo does not apply to $name.dtb"
        [ "$(fdtget "$merged" /soc/spi@7e204000 status)" = okay ] || die "$name: SPI0 still disabled after the overlay"
        [ "$(fdtget "$merged" /aliases i2c1)" = /soc/i2c@7e804000 ] || die "$name: no i2c1 alias after the overlay"
        rm -f "$merged"
    done
    install -D -m 0644 "$dtbo" "$rootfs/boot/firmware/overlays/hyperpi.dtbo"
    grep -qx 'dtoverlay=hyperpi' "$rootfs/etc/default/raspi-firmware-custom" \
        || die "/etc/default/raspi-firmware-custom does not enable the overlay"
}

# Every file brcmfmac asks for on each supported board (image/wifi-firmware.txt) is in the image.
check_wifi_firmware() {
    local rootfs=$1 brcm=$1/usr/lib/firmware/brcm board name status missing=()
    log "Wi-Fi firmware: image/wifi-firmware.txt"
    have() { local f; for f in "$@"; do [ -e "$brcm/$f" ] || [ -e "$brcm/$f.zst" ] || [ -e "$brcm/$f.xz" ] && return 0; done; return 1; }
    while read -r board name status; do
        case "$status" in
        required)
            have "$name.bin" || missing+=("$name.bin ($board)")
            have "$name.$board.txt" "$name.txt" || missing+=("$name.$board.txt ($board)")
            have "$name.$board.clm_blob" "$name.clm_blob" || missing+=("$name.clm_blob ($board)")
            ;;
        unavailable)
            if have "$name.bin"; then
                echo "build.sh: note: $name.bin is now in the image; mark it required in image/wifi-firmware.txt" >&2
            else
                echo "build.sh: note: no $name.bin in Debian: $board boards with that chip have no Wi-Fi" >&2
            fi
            ;;
        *) die "image/wifi-firmware.txt: unknown status '$status' for $board" ;;
        esac
    done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/wifi-firmware.txt")
    [ ${#missing[@]} -eq 0 ] || die "Wi-Fi firmware missing from the image: ${missing[*]}"
}

assemble() {
    local rootfs=$1 img=$2
    log "assembly -> $img"
    local fat=$WORK/boot.fat ext4=$WORK/root.ext4
    rm -f "$fat" "$ext4" "$img"
    boot_files "$rootfs"

    # FAT32 boot partition, in a file of its own. -h: hidden sectors = the partition's start,
    # which the Pi's boot ROM and some tools read from the FAT boot sector.
    local boot_start=$((ALIGN_MIB * 2048))
    mkfs.vfat -F 32 -S 512 -s "$FAT_SECTORS_PER_CLUSTER" -h "$boot_start" -n HYPERPI \
        -i "${DISK_ID#0x}" -C "$fat" $((BOOT_MIB * 1024)) >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -m -i "$fat" "$rootfs"/boot/firmware/* ::/
    # The mount point stays empty in the root fs: the FAT is mounted over it.
    find "$rootfs/boot/firmware" -mindepth 1 -delete

    # ext4 root from the folder: used space plus the shipped free space.
    local used_mib root_mib
    used_mib=$(du -sm --apparent-size "$rootfs" | cut -f1)
    root_mib=$((used_mib * 12 / 10 + ROOT_FREE_MIB))
    mke2fs -q -t ext4 -L hyperpi-root -U "$ROOT_UUID" -E "root_owner=0:0,hash_seed=$ROOT_UUID" \
        -d "$rootfs" "$ext4" "${root_mib}M"

    local root_start=$(((ALIGN_MIB + BOOT_MIB) * 2048))
    truncate -s $(((ALIGN_MIB + BOOT_MIB + root_mib) * 1024 * 1024)) "$img"
    sfdisk --quiet "$img" <<EOF
label: dos
label-id: $DISK_ID
unit: sectors
start=$boot_start, size=$((BOOT_MIB * 2048)), type=c, bootable
start=$root_start, size=$((root_mib * 2048)), type=83
EOF
    dd if="$fat" of="$img" bs=1M seek="$ALIGN_MIB" conv=notrunc,sparse status=none
    dd if="$ext4" of="$img" bs=1M seek=$((ALIGN_MIB + BOOT_MIB)) conv=notrunc,sparse status=none
    rm -f "$fat" "$ext4"
}

publish() {
    local img=$1 base
    base=$(basename "$img")
    log "compress, bmap, checksums"
    bmaptool create -o "$img.bmap" "$img"
    rm -f "$img.zst" "$img.xz"  # one packed image: the one this build made
    case $COMPRESS in
        zst) zstd -T0 -9 -q -k -f "$img" -o "$img.zst" ;;
        xz) xz -T0 -6 -k -f "$img" ;;
    esac
    (cd "$(dirname "$img")" && sha256sum "$base.$COMPRESS" "$base.bmap" > SHA256SUMS)
}

main() {
    local started=$SECONDS
    preflight
    mkdir -p "$BUILD" "$CACHE" "$WORK"
    local version key layer
    version=$("$(python_bin)" -c 'import tomllib; print(tomllib.load(open("'"$REPO"'/pyproject.toml", "rb"))["project"]["version"])')
    key=$(cache_key)
    layer="$CACHE/rootfs-$key"
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
    if [ -d "$layer" ]; then
        log "stage 1: cached Debian layer $layer"
    else
        build_debian_layer "$layer"
    fi
    local stage1=$((SECONDS - started))

    local rootfs=$WORK/rootfs
    rm -rf "$rootfs"
    # mmdebstrap unmounts the new root's /proc, /sys and /dev when it ends, but a mount that a
    # straggling process kept busy stays: the layer must hold files only, and --one-file-system
    # never copies what is mounted there (a copy of /proc fills the disk).
    unmount_below "$layer"
    cp -a --one-file-system --reflink=auto "$layer" "$rootfs"
    install_hyperpi "$rootfs" "$version"
    install_overlay "$rootfs"
    check_wifi_firmware "$rootfs"
    local img=$BUILD/hyperpi-$version-arm64.img
    assemble "$rootfs" "$img"
    rm -rf "$rootfs"
    publish "$img"
    log "done in $((SECONDS - started)) s (Debian layer $stage1 s): $(cd "$BUILD" && echo hyperpi-* SHA256SUMS)"
}

main "$@"
