"""Target safety checks (hyperpi_host.blockdev) against recorded lsblk/sysfs/mountinfo views.

laptop.json: NVMe root on LUKS+LVM, card readers, sticks; pi.json: a Pi booted from its SD
card; vm.json: recorded on the build VM. Every refusal path has a case here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hyperpi_host import blockdev
from hyperpi_host.blockdev import SystemView, TargetMounted, TargetRefused, inspect_target

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "flash"


def load(name: str, tmp_path: Path) -> SystemView:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return SystemView.from_fixture(data, tmp_path / "sys")


@pytest.fixture
def laptop(tmp_path: Path) -> SystemView:
    return load("laptop", tmp_path)


@pytest.fixture
def pi(tmp_path: Path) -> SystemView:
    return load("pi", tmp_path)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("nvme0n1", "/dev/nvme0n1 is a fixed internal disk (not removable or hotplug)"),
        ("nvme0n1p2", "/dev/nvme0n1p2 is a partition; give the whole disk, /dev/nvme0n1"),
        ("sda1", "/dev/sda1 is a partition; give the whole disk, /dev/sda"),
        ("sr0", "/dev/sr0 is an optical drive, not a whole removable disk"),
        ("loop0", "/dev/loop0 is a loop device, not a whole removable disk"),
        ("dm-1", "/dev/mapper/vg-root is an LVM volume, not a whole removable disk"),
        ("sdx", "/dev/sdx is not a disk lsblk knows"),
        ("sdb", "/dev/sdb holds the system's swap space (on /dev/sdb1)"),
        # hotplug USB disk whose partition holds an LVM volume mounted on /var
        ("sdc", "/dev/sdc holds the running system (/var is mounted from /dev/dm-3)"),
        # RAID member: only sysfs holders (not lsblk) link sdd1 to md127, mounted on /srv
        ("sdd", "/dev/sdd holds the running system (/srv is mounted from /dev/md127)"),
        # btrfs: mountinfo has an anonymous 0:55 device number; the source names /dev/sdh1
        ("sdh", "/dev/sdh holds the running system (/home is mounted from /dev/sdh1)"),
        ("sde", "/dev/sde has no medium (size 0): insert the card"),
        ("sdf", "/dev/sdf is read-only: slide the card's lock switch up"),
    ],
)
def test_laptop_refusals(laptop: SystemView, name: str, reason: str) -> None:
    with pytest.raises(TargetRefused) as refused:
        inspect_target(name, laptop, image_size=2 << 30)
    assert not isinstance(refused.value, TargetMounted)
    assert str(refused.value).startswith(reason)
    assert "\n" not in str(refused.value)


def test_too_small(laptop: SystemView) -> None:
    with pytest.raises(
        TargetRefused,
        match=r"^/dev/sdg is too small: 980.0 MiB \(1027604480 bytes\) "
        r"for an image of 2.0 GiB",
    ):
        inspect_target("sdg", laptop, image_size=2 << 30)
    assert inspect_target("sdg", laptop, image_size=1027604480).size == 1027604480


def test_mounted_card_lists_its_mounts(laptop: SystemView) -> None:
    with pytest.raises(TargetMounted) as mounted:
        inspect_target("sda", laptop, image_size=2 << 30)
    assert mounted.value.mounts == [("/dev/sda1", "/media/ana/bootfs"), ("/dev/sda2", "/media/ana/rootfs")]
    assert str(mounted.value) == (
        "/dev/sda has mounted partitions: /dev/sda1 on /media/ana/bootfs, /dev/sda2 on /media/ana/rootfs"
    )


def test_mounted_card_once_unmounted_is_a_target(laptop: SystemView) -> None:
    laptop.mountinfo = "\n".join(line for line in laptop.mountinfo.splitlines() if "/media/ana" not in line)
    target = inspect_target("sda", laptop, image_size=2 << 30)
    assert (target.path, target.size, target.vendor, target.model, target.transport) == (
        "/dev/sda",
        31914983424,
        "Generic",
        "STORAGE DEVICE",
        "usb",
    )
    assert target.removable and target.hotplug
    assert [(p.path, p.fstype, p.label) for p in target.partitions] == [
        ("/dev/sda1", "vfat", "bootfs"),
        ("/dev/sda2", "ext4", "rootfs"),
    ]
    assert "Generic STORAGE DEVICE, 29.7 GiB (31914983424 bytes, USB, removable)" in target.describe()


def test_builtin_card_slot_is_hotplug_not_removable(laptop: SystemView) -> None:
    target = inspect_target("mmcblk0", laptop, image_size=2 << 30)
    assert not target.removable and target.hotplug
    assert [p.name for p in target.partitions] == ["mmcblk0p1", "mmcblk0p2"]


def test_pi_refuses_its_own_boot_card(pi: SystemView) -> None:
    with pytest.raises(
        TargetRefused,
        match=r"^/dev/mmcblk0 holds the running system \(/ is mounted "
        r"from /dev/mmcblk0p2\)",
    ):
        inspect_target("mmcblk0", pi)
    assert inspect_target("sda", pi, image_size=4 << 30).path == "/dev/sda"
    with pytest.raises(TargetRefused, match="fixed internal disk"):
        inspect_target("zram0", pi)


def test_boot_mount_alone_is_refused(pi: SystemView) -> None:
    pi.mountinfo = "\n".join(line for line in pi.mountinfo.splitlines() if " / / " not in line)
    with pytest.raises(TargetRefused, match=r"/boot/firmware is mounted from /dev/mmcblk0p1"):
        inspect_target("mmcblk0", pi)


def test_swap_seen_in_lsblk_only(laptop: SystemView) -> None:
    # /proc/swaps names dm-2 (the LVM swap); drop it so only lsblk's [SWAP] marks it.
    laptop.swaps = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb1 partition 1 0 -3\n"
    with pytest.raises(TargetRefused, match="fixed internal disk"):
        inspect_target("nvme0n1", laptop)  # removability is checked first...
    laptop.lsblk["blockdevices"][0]["rm"] = True  # ...so pretend it were removable
    with pytest.raises(TargetRefused, match=r"swap space \(on /dev/"):
        inspect_target("nvme0n1", laptop)


def test_list_disks_marks_every_disk(laptop: SystemView) -> None:
    rows = {path: (target, reason) for target, path, reason in blockdev.list_disks(laptop)}
    assert rows["/dev/mmcblk0"][0] is not None and rows["/dev/sdg"][0] is not None
    assert "offers to unmount" in rows["/dev/sda"][1]
    assert "fixed internal disk" in rows["/dev/nvme0n1"][1]
    assert rows["/dev/loop0"][0] is None


def test_mountinfo_escapes_and_system_mounts() -> None:
    line = r"40 22 8:1 / /media/ana/MY\040CARD rw - vfat /dev/sda1 rw"
    assert blockdev.parse_mountinfo(line) == [("8:1", "/media/ana/MY CARD", "/dev/sda1")]
    assert blockdev.is_system_mount("/") and blockdev.is_system_mount("/boot/efi")
    assert blockdev.is_system_mount("/var/lib/docker") and not blockdev.is_system_mount("/media/x")
    assert not blockdev.is_system_mount("/variety")


def test_recorded_vm_refuses_everything(tmp_path: Path) -> None:
    view = load("vm", tmp_path)
    rows = blockdev.list_disks(view)
    assert rows and all(target is None for target, _, _ in rows)
    assert any("fixed internal disk" in reason for _, path, reason in rows if path == "/dev/vda")


def test_live_snapshot_round_trips(tmp_path: Path) -> None:
    live = SystemView.read_live()
    recorded = SystemView.from_fixture(json.loads(json.dumps(blockdev.snapshot(live))), tmp_path)
    assert [(p, r) for _, p, r in blockdev.list_disks(live)] == [(p, r) for _, p, r in blockdev.list_disks(recorded)]


def test_device_name_checks_the_file_type(tmp_path: Path) -> None:
    regular = tmp_path / "card.img"
    regular.write_bytes(b"x")
    with pytest.raises(TargetRefused, match="is a regular file, not a disk; pass --to-file"):
        blockdev.device_name(regular)
    with pytest.raises(TargetRefused, match="/dev/null is not a block device"):
        blockdev.device_name("/dev/null")
    with pytest.raises(TargetRefused, match="no such device: /dev/sdzz9"):
        blockdev.device_name("/dev/sdzz9")
    disks = [p for p in ("/dev/vda", "/dev/sda", "/dev/nvme0n1") if os.path.exists(p)]
    if disks:  # whatever this machine's disk is called, its name comes back
        assert blockdev.device_name(disks[0]) == os.path.basename(disks[0])
