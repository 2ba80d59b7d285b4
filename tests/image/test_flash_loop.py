"""Flashing real block devices: a loop device (always, as root) and a `scsi_debug` disk (a
removable SCSI disk emulated by the kernel, when the kernel has that module).

The loop device shows the command's live refusal (a loop device is not a removable disk) and
the engine's block-device path: O_EXCL, O_DIRECT, backup-GPT wipe, read-back through the
device. The scsi_debug disk runs the whole command, safety checks included, end to end.
"""

from __future__ import annotations

import glob
import gzip
import io
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperpi_host import cli, flash
from hyperpi_host.bmap import read_bmap, write_bmap
from hyperpi_host.flash import FlashError, flash_image, open_target
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
            result = flash_image(source, fd, label=device, bmap=bmap, is_block=True, direct=direct,
                                 target_size=DISK, progress=False)
    finally:
        os.close(fd)
    card = Path(device).read_bytes()
    assert card == backing.read_bytes()
    assert card[DISK - MiB:] == bytes(MiB)  # the backup GPT area was wiped
    if with_bmap:
        for r in bmap.ranges:
            assert card[r.start:r.end] == data[r.start:r.end]
        assert card[8 * MiB: 9 * MiB] == b"\x55" * MiB  # unmapped: left alone, as bmaptool does
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
            flash_image(source, fd, label=device, is_block=True, direct=direct, target_size=DISK,
                        progress=False)
    finally:
        os.close(fd)
    assert str(failed.value) == (f"{device} is full at byte {DISK}: the image is bigger than the "
                                 f"target; {device} was left invalid (first MiB zeroed)")
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


@pytest.fixture
def scsi_debug_disk():
    """A removable 40 MiB SCSI disk from the kernel's scsi_debug module."""
    if shutil.which("modprobe") is None:
        pytest.fail("modprobe is missing: tests/system-deps.sh installs kmod")
    done = subprocess.run(["modprobe", "scsi_debug", "removable=1", f"dev_size_mb={DISK // MiB}",
                           "num_tgts=1", "max_luns=1"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the kernel refused scsi_debug: {done.stderr.strip()}")
    try:
        names: list[str] = []
        for _ in range(100):
            names = glob.glob("/sys/bus/pseudo/drivers/scsi_debug/adapter*/host*/target*/*/block/*")
            if names and os.path.exists(f"/dev/{os.path.basename(names[0])}"):
                break
            time.sleep(0.1)
        assert names, "scsi_debug loaded but no disk appeared"
        if shutil.which("udevadm"):  # let udev finish probing the new disk before we claim it
            subprocess.run(["udevadm", "settle"], check=False, capture_output=True)
        yield f"/dev/{os.path.basename(names[0])}"
    finally:
        if shutil.which("udevadm"):
            subprocess.run(["udevadm", "settle"], check=False, capture_output=True)
        subprocess.run(["modprobe", "-r", "scsi_debug"], check=False)


def test_command_flashes_a_removable_scsi_disk(tmp_path: Path, scsi_debug_disk: str, image) -> None:
    path, data = image
    bmap = read_bmap(write_bmap(path, tmp_path / "hyperpi.img.bmap"))
    code, err = run_cli(str(path), scsi_debug_disk, "--yes")
    assert code == 0, err
    assert "removable" in err and "verified" in err
    card = Path(scsi_debug_disk).read_bytes()
    assert all(card[r.start:r.end] == data[r.start:r.end] for r in bmap.ranges)
    # A mounted card: the command unmounts it (--yes answers that question too), then flashes.
    subprocess.run(["mkfs.ext4", "-q", "-F", scsi_debug_disk], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", scsi_debug_disk, str(mnt)], check=True)
    try:
        code, err = run_cli(str(path), scsi_debug_disk, "--yes", "--no-bmap")
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False)
    assert code == 0, err
    assert f"unmounted {scsi_debug_disk} from {mnt}" in err
    assert Path(scsi_debug_disk).read_bytes()[: len(data)] == data
    # Too small an image target is refused before writing.
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(DISK + MiB)
    code, err = run_cli(str(big), scsi_debug_disk, "--yes")
    assert code == 2 and "is too small" in err
