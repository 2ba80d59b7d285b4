"""Flashing real block devices: loop devices (always, as root; CI runs as root).

The loop device shows the command's live refusal (a loop device is not a removable disk) and
the engine's block-device path: O_EXCL, O_DIRECT, backup-GPT wipe, read-back through the
device. The whole command, safety checks included, runs end to end against a loop device too:
the only thing substituted is the view of the system that `blockdev` reads (lsblk JSON and
sysfs, through `SystemView.from_fixture`), which shows that loop device as a removable USB
card reader and a second loop device over the same bytes as its mounted first partition (this
machine's kernel has no partition-table support, so a real kernel partition cannot be relied on). Mounts,
unmounting, the exclusive open, writing and the read-back are all real.

An earlier test used a `scsi_debug` disk instead; it was removed because neither this machine's
kernel nor CI's has that module, so it only ever skipped.
"""

from __future__ import annotations

import gzip
import io
import itertools
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from hyperpi_host import blockdev, cli, flash
from hyperpi_host.blockdev import SystemView
from hyperpi_host.bmap import read_bmap, write_bmap
from hyperpi_host.flash import open_target
from hyperpi_host.imagewrite import FlashError, flash_image
from hyperpi_host.imagefile import open_image

MiB = 1 << 20
DISK = 40 * MiB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="block devices need root (CI runs as root)")


def make_image(path: Path) -> bytes:
    with open(path, "wb") as f:
        for offset, length in [(0, 300_000), (4 * MiB, 3 * MiB), (20 * MiB, 4096)]:
            f.seek(offset)
            f.write(os.urandom(length))
        f.truncate(24 * MiB)
    return path.read_bytes()


def run_cli(*args: str) -> tuple[int, str]:
    old_in, old_err = sys.stdin, sys.stderr
    sys.stdin, sys.stderr = io.StringIO(""), io.StringIO()
    try:
        return cli.main(["flash", *args]), sys.stderr.getvalue()
    finally:
        sys.stdin, sys.stderr = old_in, old_err


@pytest.fixture
def loop_device(tmp_path: Path):
    if shutil.which("losetup") is None:
        pytest.fail("losetup is missing: tests/system-deps.sh installs util-linux")
    backing = tmp_path / "disk.raw"
    backing.write_bytes(b"\x55" * DISK)  # an old card's contents
    done = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the kernel refused a loop device: {done.stderr.strip()}")
    device = done.stdout.strip()
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "hyperpi.img"
    return path, make_image(path)


def test_command_refuses_a_loop_device(loop_device, image) -> None:
    device, backing = loop_device
    code, err = run_cli(str(image[0]), device, "--yes")
    assert code == 2
    assert err == f"hyperpi: refusing to flash: {device} is a loop device, not a whole removable disk\n"
    assert backing.read_bytes() == b"\x55" * DISK


@pytest.mark.parametrize("with_bmap", [True, False])
def test_engine_writes_and_verifies_a_block_device(tmp_path: Path, loop_device, image, with_bmap: bool) -> None:
    device, backing = loop_device
    path, data = image
    bmap = read_bmap(write_bmap(path, tmp_path / "x.bmap")) if with_bmap else None
    packed = tmp_path / "hyperpi.img.xz"
    packed.write_bytes(lzma.compress(data))
    fd, direct = open_target(device, is_block=True)
    try:
        assert direct  # a loop device takes O_DIRECT
        with open_image(packed) as source:
            result = flash_image(
                source, fd, label=device, bmap=bmap, is_block=True, direct=direct, target_size=DISK, progress=False
            )
    finally:
        os.close(fd)
    card = Path(device).read_bytes()
    assert card == backing.read_bytes()
    assert card[DISK - MiB :] == bytes(MiB)  # the backup GPT area was wiped
    if with_bmap:
        for r in bmap.ranges:
            assert card[r.start : r.end] == data[r.start : r.end]
        assert card[8 * MiB : 9 * MiB] == b"\x55" * MiB  # unmapped: left alone, as bmaptool does
        assert result.verified == bmap.mapped_bytes
    else:
        assert card[: len(data)] == data  # zeros written too: a used card does not read back zero
        assert result.verified == len(data)


def test_image_of_unknown_size_bigger_than_the_device(tmp_path: Path, loop_device) -> None:
    device, backing = loop_device
    packed = tmp_path / "big.img.gz"  # gzip: the size is known only at the end
    packed.write_bytes(gzip.compress(os.urandom(DISK + 4 * MiB), compresslevel=1))
    fd, direct = open_target(device, is_block=True)
    try:
        with open_image(packed) as source, pytest.raises(FlashError) as failed:
            flash_image(source, fd, label=device, is_block=True, direct=direct, target_size=DISK, progress=False)
    finally:
        os.close(fd)
    assert str(failed.value) == (
        f"{device} is full at byte {DISK}: the image is bigger than the "
        f"target; {device} was left invalid (first MiB zeroed)"
    )
    assert backing.read_bytes()[:MiB] == bytes(MiB)


def test_target_in_use_is_refused(loop_device, image) -> None:
    device, _ = loop_device
    holder = os.open(device, os.O_RDONLY | os.O_EXCL)  # as a mount or another flasher would
    try:
        with pytest.raises(cli.UserError, match=f"{device} is in use"):
            open_target(device, is_block=True)
    finally:
        os.close(holder)


def test_mounted_device_is_refused_by_the_exclusive_open(tmp_path: Path, loop_device) -> None:
    device, backing = loop_device
    if shutil.which("mkfs.ext4") is None:
        pytest.fail("mkfs.ext4 is missing: tests/system-deps.sh installs e2fsprogs")
    subprocess.run(["mkfs.ext4", "-q", device], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", device, str(mnt)], check=True)
    try:
        with pytest.raises(cli.UserError, match=f"{device} is in use .mounted, or open in another"):
            open_target(device, is_block=True)
        flash._unmount([(device, str(mnt))])  # what the command does once the user agrees
        assert not os.path.ismount(mnt)
        os.close(open_target(device, is_block=True)[0])
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=True)


PART_START, PART_SIZE = 8 * MiB, 8 * MiB  # where the card's "first partition" lies (unmapped by the image)
VENDOR, MODEL = "Generic", "STORAGE DEVICE"  # what a common USB SD card reader reports
EXT4_MAGIC = 1024 + 0x38  # offset of the superblock's magic 0xEF53 in an ext4 filesystem


def run_command(read_view: Callable[[], SystemView], *args: str, stdin: str = "") -> tuple[int, str]:
    """`hyperpi flash ARGS` in-process as `cli.main` runs it, with the checks seeing `read_view`."""
    parsed = cli.build_parser().parse_args(["flash", *args])
    old_in, old_err = sys.stdin, sys.stderr
    sys.stdin, sys.stderr = io.StringIO(stdin), io.StringIO()
    try:
        try:
            code = flash.run(parsed, read_view=read_view)
        except cli.UserError as error:
            print(f"hyperpi: {error}", file=sys.stderr)
            code = error.exit_code
        return code, sys.stderr.getvalue()
    finally:
        sys.stdin, sys.stderr = old_in, old_err


def usb_card_view(root: Path, disk: str, partition: str) -> Callable[[], SystemView]:
    """The live view of this machine, except that loop device `disk` is a removable USB disk and
    loop device `partition` its first partition. Each call reads the machine again (mountinfo
    included), so the command sees its own unmount, as it would live."""
    disk_name, part_name = Path(disk).name, Path(partition).name
    reads = itertools.count()

    def read() -> SystemView:
        data = blockdev.snapshot(SystemView.read_live())
        devices = data["lsblk"]["blockdevices"]
        part = next(d for d in devices if d["kname"] == part_name)
        devices.remove(part)
        part.update(type="part", pkname=disk_name)
        card = next(d for d in devices if d["kname"] == disk_name)
        card.update(type="disk", rm=True, hotplug=True, vendor=VENDOR, model=MODEL, tran="usb", children=[part])
        sysfs = data["sysfs"]
        for base in (f"block/{disk_name}", f"class/block/{disk_name}"):
            sysfs[f"{base}/removable"] = "1\n"
        sysfs[f"block/{disk_name}/device/vendor"] = f"{VENDOR:8}\n"  # SCSI INQUIRY pads with spaces
        sysfs[f"block/{disk_name}/device/model"] = f"{MODEL:16}\n"
        for base in (f"block/{disk_name}/{part_name}", f"class/block/{part_name}"):
            sysfs[f"{base}/partition"] = "1\n"
            sysfs[f"{base}/dev"] = sysfs[f"class/block/{part_name}/dev"]
        return SystemView.from_fixture(data, root / f"sysfs-{next(reads)}")

    return read


@pytest.fixture
def usb_card(tmp_path: Path, loop_device):
    """(disk, partition device, its mount point, view): a loop device seen as a removable USB
    disk whose first partition (a second loop device over its bytes) holds a mounted ext4."""
    device, backing = loop_device
    if shutil.which("mkfs.ext4") is None:
        pytest.fail("mkfs.ext4 is missing: tests/system-deps.sh installs e2fsprogs")
    part = subprocess.run(
        ["losetup", "--find", "--show", "--offset", str(PART_START), "--sizelimit", str(PART_SIZE), str(backing)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-L", "data", part], check=True)
        subprocess.run(["mount", part, str(mnt)], check=True)
        yield device, part, mnt, usb_card_view(tmp_path, device, part)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "--detach", part], check=False)


def test_command_flashes_a_removable_usb_disk(tmp_path: Path, usb_card, image) -> None:
    device, part, mnt, view = usb_card
    backing = Path(
        subprocess.run(
            ["losetup", "--noheadings", "--output", "BACK-FILE", device], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    path, data = image
    bmap = read_bmap(write_bmap(path, tmp_path / "hyperpi.img.bmap"))
    before = backing.read_bytes()

    # Not confirmed (no --yes, nothing typed): nothing unmounted, nothing written.
    code, err = run_command(view, str(path), device)
    assert code == 1, err
    assert f"{device} has mounted partitions: {part} on {mnt}" in err
    assert err.endswith("hyperpi: not confirmed, nothing was written (pass --yes to skip this question)\n")
    assert os.path.ismount(mnt) and backing.read_bytes() == before

    # --yes: the partition is unmounted, the card flashed through the bmap and read back.
    code, err = run_command(view, str(path), device, "--yes")
    assert code == 0, err
    assert f"unmounted {part} from {mnt}\n" in err
    assert f"target {device}: {VENDOR} {MODEL}, 40.0 MiB ({DISK} bytes, USB, removable)" in err
    assert f"\n    {part} 8.0 MiB" in err  # its fstype/label show only where udev has probed it
    assert f"verified {bmap.mapped_bytes / MiB:.1f} MiB read back from {device}" in err
    assert not os.path.ismount(mnt)
    card = Path(device).read_bytes()
    assert all(card[r.start : r.end] == data[r.start : r.end] for r in bmap.ranges)
    assert card[DISK - MiB :] == bytes(MiB)  # backup GPT area wiped
    # Unmapped by the bmap, so left alone (as bmaptool does): the old ext4 superblock is still there.
    assert card[PART_START + EXT4_MAGIC : PART_START + EXT4_MAGIC + 2] == b"\x53\xef"

    # Open elsewhere (as another flasher would): the exclusive open refuses, nothing is written.
    before = backing.read_bytes()
    holder = os.open(device, os.O_RDONLY | os.O_EXCL)
    try:
        code, err = run_command(view, str(path), device, "--yes", "--no-bmap")
    finally:
        os.close(holder)
    assert code == 2
    assert err.endswith(f"hyperpi: {device} is in use (mounted, or open in another program); close it and try again\n")
    assert backing.read_bytes() == before

    # Too big an image is refused by the checks, before anything is written.
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(DISK + MiB)
    code, err = run_command(view, str(big), device, "--yes")
    assert code == 2
    assert err == (
        f"hyperpi: refusing to flash: {device} is too small: 40.0 MiB ({DISK} bytes) "
        f"for an image of 41.0 MiB ({DISK + MiB} bytes); use a bigger card\n"
    )
    assert backing.read_bytes() == before
