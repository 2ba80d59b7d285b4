"""Which block devices may be flashed: target discovery and the safety checks before any write.

A flash target must be proven to be a whole, removable or hotplug disk (sysfs `removable`,
lsblk `RM`/`HOTPLUG`, `TYPE disk`) with a medium in it, writable, big enough, and not holding
anything the running system needs: no mount of `/`, `/boot`, `/usr`, `/var` (or the other
SYSTEM_MOUNTS) and no swap, on the disk itself, its partitions, or anything stacked on them
(device-mapper, LVM, RAID: sysfs `holders` and lsblk's children). Other mounts are reported
as `TargetMounted`, so the command can offer to unmount exactly those.

Everything is read through a `SystemView` (lsblk JSON, a sysfs root, mountinfo, swaps):
`SystemView.read_live()` reads this machine, `SystemView.from_fixture(...)` a recorded one, so
every refusal is tested against real-format data without owning the hardware.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperpi_host.progress import human_bytes

LSBLK_COLUMNS = (
    "NAME,KNAME,PATH,MAJ:MIN,TYPE,RM,HOTPLUG,RO,SIZE,VENDOR,MODEL,SERIAL,TRAN,FSTYPE,LABEL,MOUNTPOINTS,PKNAME"
)
# Mount points the system needs (and everything below them except under "/" itself): a disk
# holding one of these is never a flash target, and we never offer to unmount it.
SYSTEM_MOUNTS = ("/", "/boot", "/usr", "/var", "/etc", "/home", "/root", "/opt", "/srv", "/nix")
SECTOR = 512  # sysfs `size` is always in 512-byte sectors, whatever the device's block size
UNMOUNT_HINT = " (hyperpi flash offers to unmount them)"
# Holder chains (partition -> crypt -> LVM -> ...) are short; a longer one means a sysfs loop.
MAX_HOLDER_DEPTH = 16


class TargetRefused(Exception):
    """The device must not be flashed; the message says why and what to do (one line)."""


class TargetMounted(TargetRefused):
    """Only obstacle left: some of the target's partitions are mounted (none are the system's)."""

    def __init__(self, message: str, mounts: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.mounts = mounts  # (device path, mount point), in mountinfo order


@dataclass
class Partition:
    name: str
    path: str
    size: int
    fstype: str | None
    label: str | None
    mountpoints: list[str]


@dataclass
class Target:
    """A whole disk that passed the checks (or, from `list_disks`, a candidate)."""

    name: str
    path: str
    size: int
    vendor: str
    model: str
    transport: str
    removable: bool
    hotplug: bool
    logical_block_size: int
    partitions: list[Partition] = field(default_factory=list)

    def describe(self) -> str:
        what = " ".join(x for x in (self.vendor, self.model) if x) or "unknown device"
        via = f", {self.transport.upper()}" if self.transport else ""
        kind = "removable" if self.removable else "hotplug"
        return f"{self.path}: {what}, {human_bytes(self.size)} ({self.size} bytes{via}, {kind})"


@dataclass
class SystemView:
    """A snapshot of what the kernel says about block devices, mounts and swap."""

    lsblk: dict[str, Any]
    sysfs: Path
    mountinfo: str
    swaps: str
    live: bool = False  # only a live view may resolve /dev symlinks on this machine

    @classmethod
    def read_live(cls) -> SystemView:
        try:
            out = subprocess.run(
                ["lsblk", "--json", "--bytes", "--output", LSBLK_COLUMNS], check=True, capture_output=True, text=True
            ).stdout
        except FileNotFoundError:
            raise TargetRefused("lsblk is missing: install util-linux") from None
        except subprocess.CalledProcessError as error:
            raise TargetRefused(
                f"lsblk failed ({error.stderr.strip()}); hyperpi needs util-linux 2.37 or newer"
            ) from None
        return cls(
            json.loads(out),
            Path("/sys"),
            Path("/proc/self/mountinfo").read_text(),
            Path("/proc/swaps").read_text(),
            live=True,
        )

    @classmethod
    def from_fixture(cls, data: dict[str, Any], sysfs_root: Path) -> SystemView:
        """A recorded view: `data` holds lsblk/mountinfo/swaps and a {path: text} sysfs map,
        which is written out under `sysfs_root` (a temporary directory)."""
        for rel, content in data["sysfs"].items():
            path = sysfs_root / rel
            if content is None:  # a directory, e.g. an empty holders/
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        return cls(data["lsblk"], sysfs_root, data["mountinfo"], data["swaps"])

    # -- sysfs helpers
    def sys_text(self, rel: str) -> str | None:
        try:
            return (self.sysfs / rel).read_text().strip()
        except OSError:
            return None

    def sys_list(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.sysfs / rel))
        except OSError:
            return []


@dataclass
class _Node:
    info: dict[str, Any]
    parent: str | None


def _flatten(view: SystemView) -> dict[str, _Node]:
    """lsblk's tree as kname -> node (a device under several parents, e.g. RAID, kept once)."""
    nodes: dict[str, _Node] = {}

    def walk(items: list[dict[str, Any]], parent: str | None) -> None:
        for item in items:
            kname = item.get("kname") or item["name"]
            nodes.setdefault(kname, _Node(item, parent))
            walk(item.get("children") or [], kname)

    walk(view.lsblk.get("blockdevices") or [], None)
    return nodes


def _flag(value: Any) -> bool:
    # lsblk 2.33+ prints JSON booleans; older versions print "0"/"1" strings.
    return value is True or value in ("1", 1, "true")


def _unescape(text: str) -> str:
    """mountinfo and /proc/swaps write space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(major:minor, mount point, source) per line of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 7:
            continue
        sep = fields.index("-", 6)
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
        mounts.append((fields[2], _unescape(fields[4]), _unescape(source)))
    return mounts


def parse_swaps(text: str) -> list[str]:
    """The device or file names in /proc/swaps."""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


def is_system_mount(mountpoint: str) -> bool:
    return any(mountpoint == m or (m != "/" and mountpoint.startswith(m + "/")) for m in SYSTEM_MOUNTS)


def device_name(path: str | Path) -> str:
    """The kernel name (e.g. "sdb") of the block device at `path` on this machine."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TargetRefused(f"no such device: {path} (see `hyperpi flash --list`)") from None
    except PermissionError:
        raise TargetRefused(f"cannot access {path}: permission denied (run with sudo)") from None
    if stat.S_ISREG(info.st_mode):
        raise TargetRefused(f"{path} is a regular file, not a disk; pass --to-file to write the image into a file")
    if not stat.S_ISBLK(info.st_mode):
        raise TargetRefused(f"{path} is not a block device (see `hyperpi flash --list`)")
    number = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    link = Path("/sys/dev/block") / number
    if not link.exists():
        raise TargetRefused(f"{path} ({number}) is not known to sysfs; is the device still there?")
    return link.resolve().name


def _family(view: SystemView, nodes: dict[str, _Node], name: str) -> dict[str, set[str]]:
    """Every device stacked on disk `name` -> the numbers and paths it is known by.

    The union of lsblk's children and sysfs holders (recursively), so a mount or swap on a
    partition, a LUKS mapping of it, or an LVM volume inside that, all count as the disk's.
    """
    family: dict[str, set[str]] = {}

    def add(kname: str, depth: int) -> None:
        if kname in family or depth > MAX_HOLDER_DEPTH:
            return
        ids = family.setdefault(kname, {f"/dev/{kname}"})
        node = nodes.get(kname)
        if node:
            ids.update(x for x in (node.info.get("maj:min"), node.info.get("path")) if x)
            for child in node.info.get("children") or []:
                add(child.get("kname") or child["name"], depth + 1)
        base = f"class/block/{kname}"
        number = view.sys_text(f"{base}/dev")
        if number:
            ids.add(number)
        mapper = view.sys_text(f"{base}/dm/name")
        if mapper:
            ids.add(f"/dev/mapper/{mapper}")
        for holder in view.sys_list(f"{base}/holders"):
            add(holder, depth + 1)
        # Partitions live in sysfs under their disk (block/sdb/sdb1), not in block/ itself.
        for entry in view.sys_list(f"block/{kname}"):
            if entry.startswith(kname) and view.sys_text(f"block/{kname}/{entry}/partition"):
                add(entry, depth + 1)

    add(name, 0)
    return family


def _partitions(nodes: dict[str, _Node], name: str) -> list[Partition]:
    parts = []
    for child in nodes[name].info.get("children") or []:
        if child.get("type") == "part":
            parts.append(
                Partition(
                    child["name"],
                    child.get("path") or f"/dev/{child['name']}",
                    int(child.get("size") or 0),
                    child.get("fstype"),
                    child.get("label"),
                    [m for m in child.get("mountpoints") or [] if m],
                )
            )
    return parts


def inspect_target(name: str, view: SystemView, image_size: int | None = None) -> Target:
    """Check that disk `name` (kernel name, e.g. "sdb") may be overwritten; return what it is.

    Raises TargetRefused (or TargetMounted, when unmounting would fix it) with the reason.
    """
    nodes = _flatten(view)
    node = nodes.get(name)
    path = node.info.get("path") if node else None
    path = path or f"/dev/{name}"
    if node is None:
        raise TargetRefused(f"{path} is not a disk lsblk knows (see `hyperpi flash --list`)")
    kind = node.info.get("type")
    if kind == "part":
        parent = node.parent or "its disk"
        raise TargetRefused(f"{path} is a partition; give the whole disk, /dev/{parent}")
    if kind != "disk" or view.sys_text(f"block/{name}/partition"):
        what = {
            "loop": "a loop device",
            "rom": "an optical drive",
            "crypt": "an encrypted mapping",
            "lvm": "an LVM volume",
            "dm": "a device-mapper device",
        }.get(kind or "", f"of type {kind}")
        raise TargetRefused(f"{path} is {what}, not a whole removable disk")
    removable = view.sys_text(f"block/{name}/removable") == "1" or _flag(node.info.get("rm"))
    hotplug = _flag(node.info.get("hotplug"))
    if not (removable or hotplug):
        raise TargetRefused(
            f"{path} is a fixed internal disk (not removable or hotplug); hyperpi flashes only SD cards and USB drives"
        )

    family = _family(view, nodes, name)
    ids_to_device = {i: dev for dev, ids in family.items() for i in ids}

    def owner(ident: str) -> str | None:
        if ident in ids_to_device:
            return ids_to_device[ident]
        if view.live and ident.startswith("/dev/"):
            return ids_to_device.get(os.path.realpath(ident))
        return None

    for swap in parse_swaps(view.swaps):
        dev = owner(swap)
        if dev:
            raise TargetRefused(f"{path} holds the system's swap space (on {swap}); choose another disk")
    for dev_name in family:
        n = nodes.get(dev_name)
        if n and "[SWAP]" in (n.info.get("mountpoints") or []):
            raise TargetRefused(f"{path} holds the system's swap space (on /dev/{dev_name}); choose another disk")
    mounted: list[tuple[str, str]] = []
    for number, mountpoint, source in parse_mountinfo(view.mountinfo):
        dev = owner(number) or owner(source)
        if not dev:
            continue
        if is_system_mount(mountpoint):
            raise TargetRefused(
                f"{path} holds the running system ({mountpoint} is mounted from /dev/{dev}); choose another disk"
            )
        mounted.append((source if source.startswith("/dev/") else f"/dev/{dev}", mountpoint))

    size_text = view.sys_text(f"block/{name}/size")
    size = int(size_text) * SECTOR if size_text and size_text.isdigit() else int(node.info.get("size") or 0)
    if size == 0:
        raise TargetRefused(f"{path} has no medium (size 0): insert the card, then try again")
    if view.sys_text(f"block/{name}/ro") == "1" or _flag(node.info.get("ro")):
        raise TargetRefused(
            f"{path} is read-only: slide the card's lock switch up (away from LOCK), reinsert it, and try again"
        )
    if image_size is not None and image_size > size:
        raise TargetRefused(
            f"{path} is too small: {human_bytes(size)} ({size} bytes) for an "
            f"image of {human_bytes(image_size)} ({image_size} bytes); use a bigger card"
        )
    if mounted:
        where = ", ".join(f"{dev} on {mp}" for dev, mp in mounted)
        raise TargetMounted(f"{path} has mounted partitions: {where}", mounted)

    block_size = view.sys_text(f"block/{name}/queue/logical_block_size")
    return Target(
        name=name,
        path=path,
        size=size,
        vendor=(view.sys_text(f"block/{name}/device/vendor") or node.info.get("vendor") or "").strip(),
        model=(view.sys_text(f"block/{name}/device/model") or node.info.get("model") or "").strip(),
        transport=node.info.get("tran") or "",
        removable=removable,
        hotplug=hotplug,
        logical_block_size=int(block_size) if block_size and block_size.isdigit() else SECTOR,
        partitions=_partitions(nodes, name),
    )


def list_disks(view: SystemView) -> list[tuple[Target | None, str, str | None]]:
    """Every whole disk: (Target if it may be flashed, path, reason it may not, or None)."""
    result: list[tuple[Target | None, str, str | None]] = []
    for item in view.lsblk.get("blockdevices") or []:
        name = item.get("kname") or item["name"]
        path = item.get("path") or f"/dev/{name}"
        try:
            result.append((inspect_target(name, view), path, None))
        except TargetMounted as mounted:
            result.append((None, path, f"{mounted}{UNMOUNT_HINT}"))
        except TargetRefused as refused:
            result.append((None, path, str(refused)))
    return result


SNAPSHOT_FILES = (
    "removable",
    "size",
    "ro",
    "partition",
    "dev",
    "dm/name",
    "device/vendor",
    "device/model",
    "queue/logical_block_size",
)


def snapshot(view: SystemView) -> dict[str, Any]:
    """The parts of `view` these checks read, as data for `SystemView.from_fixture` (used to
    record test fixtures and to attach to bug reports; holds no file contents or secrets)."""
    sysfs: dict[str, str | None] = {}

    def grab(rel: str) -> None:
        for name in SNAPSHOT_FILES:
            text = view.sys_text(f"{rel}/{name}")
            if text is not None:
                sysfs[f"{rel}/{name}"] = text + "\n"

    for kname, node in _flatten(view).items():
        grab(f"class/block/{kname}")
        sysfs[f"class/block/{kname}/holders"] = None
        for holder in view.sys_list(f"class/block/{kname}/holders"):
            sysfs[f"class/block/{kname}/holders/{holder}"] = ""
        if node.info.get("type") == "part" and node.parent:
            grab(f"block/{node.parent}/{kname}")
        elif view.sys_list(f"block/{kname}"):
            grab(f"block/{kname}")
    return {"lsblk": view.lsblk, "sysfs": sysfs, "mountinfo": view.mountinfo, "swaps": view.swaps}
