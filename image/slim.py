#!/usr/bin/env python3
"""Slim the Debian layer down to what the supported boards use (run by image/hooks/customize.sh).

    python3 image/slim.py ROOTFS

- Kernel modules: keeps those image/kernel-modules.txt names, with what they need (modules.dep
  and modules.softdep), removes the rest of Debian's generic arm64 set, runs depmod, and writes
  the initramfs's module list (/etc/initramfs-tools/modules) from the lines marked `initramfs`.
  `@devicetree` there: every module whose device-tree alias matches a `compatible` in the DTBs
  of the supported boards. The kept list goes to /usr/share/hyperpi/kernel-modules.kept (the
  boot test loads every one of them on the emulated Pi).
- Wi-Fi firmware: in /usr/lib/firmware/{brcm,cypress}, keeps only the files brcmfmac asks for on
  the supported boards (image/wifi-firmware.txt), and what they link to.
- REMOVE below: caches and files no board reads, each with its reason.

Standard library only, run by the build host's python3; dtc and depmod come from the host too.
Prints one summary line per step.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE_LIST = HERE / "kernel-modules.txt"
WIFI_FIRMWARE = HERE / "wifi-firmware.txt"
# The supported boards' DTBs (and close kin); image/build.sh PI_DTBS checks the overlay on the same.
PI_DTBS = (
    "bcm2837-rpi-3-b",
    "bcm2837-rpi-3-b-plus",
    "bcm2837-rpi-3-a-plus",
    "bcm2711-rpi-4-b",
    "bcm2711-rpi-400",
    "bcm2837-rpi-zero-2-w",
)
KEPT_RECORD = "usr/share/hyperpi/kernel-modules.kept"
INITRAMFS_MODULES = "etc/initramfs-tools/modules"
# (glob under the root, reason). The DTBs of other SoC families are excluded at install time
# (dpkg path-exclude in image/build.sh), so kernel upgrades do not bring them back.
REMOVE = (
    ("var/lib/apt/lists/*", "apt's package indices: `apt update` fetches them again (~60 MB)"),
    ("var/cache/debconf/*-old", "debconf's backups of its own database"),
    ("var/log/*.log", "the build's own logs (dpkg, alternatives): not the card's"),
)


def module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def read_list() -> list[tuple[str, bool]]:
    entries = []
    for number, line in enumerate(MODULE_LIST.read_text().splitlines(), 1):
        text, _, reason = line.partition("#")
        fields = text.split()
        if not fields:
            continue
        if not reason.strip() or len(fields) > 2 or (len(fields) == 2 and fields[1] != "initramfs"):
            raise SystemExit(f"{MODULE_LIST.name}:{number}: want `GLOB [initramfs]  # reason`, got {line!r}")
        entries.append((fields[0], len(fields) == 2))
    return entries


def dtb_compatibles(root: Path, kver: str) -> set[str]:
    found: set[str] = set()
    for name in PI_DTBS:
        dtb = root / f"usr/lib/linux-image-{kver}/broadcom/{name}.dtb"
        source = subprocess.run(
            ["dtc", "-q", "-I", "dtb", "-O", "dts", str(dtb)], capture_output=True, text=True, check=True
        ).stdout
        for values in re.findall(r'\bcompatible = ((?:"[^"]*",?\s*)+);', source):
            found.update(re.findall(r'"([^"]*)"', values))
    return found


def devicetree_modules(moddir: Path, compatibles: set[str]) -> set[str]:
    """Module names whose `of:` aliases match one of the compatibles (modules.alias)."""
    names = set()
    for line in (moddir / "modules.alias").read_text().splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[1].startswith("of:"):
            continue
        match = re.match(r"of:N\*T\*C(.*?)(?:C\*)?$", parts[1])
        if match and any(fnmatch.fnmatchcase(c, match.group(1)) for c in compatibles):
            names.add(parts[2].replace("-", "_"))
    return names


def closure(moddir: Path, wanted: set[str]) -> set[str]:
    """Paths (relative to moddir) of the wanted modules and of everything they need: their
    modules.dep entries and their soft dependencies (modules.softdep), which name a module or an
    alias (ext4 wants `crypto-crc32c`, that is crc32c_generic: without it no ext4 mounts)."""
    by_name: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        by_name[module_name(path)] = path
        deps[path] = rest.split()
    provides: dict[str, set[str]] = {}  # an exact alias -> the modules that provide it
    alias_file = moddir / "modules.alias"
    for line in alias_file.read_text().splitlines() if alias_file.exists() else []:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "alias" and not any(c in fields[1] for c in "*?["):
            provides.setdefault(fields[1].replace("-", "_"), set()).add(fields[2].replace("-", "_"))
    softdeps: dict[str, list[str]] = {}
    softdep_file = moddir / "modules.softdep"
    for line in softdep_file.read_text().splitlines() if softdep_file.exists() else []:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "softdep":
            softdeps[fields[1].replace("-", "_")] = [f.replace("-", "_") for f in fields[2:] if not f.endswith(":")]

    def soft(path: str) -> list[str]:
        names = softdeps.get(module_name(path), [])
        return [by_name[m] for n in names for m in sorted({n} | provides.get(n, set())) if m in by_name]

    todo = [by_name[n] for n in wanted if n in by_name]
    kept: set[str] = set()
    while todo:
        path = todo.pop()
        if path in kept:
            continue
        kept.add(path)
        todo += deps.get(path, []) + soft(path)
    return kept


def slim_modules(root: Path) -> None:
    moddirs = sorted((root / "usr/lib/modules").iterdir())
    if len(moddirs) != 1:
        raise SystemExit(f"slim.py: want one kernel in the image, found {[d.name for d in moddirs]}")
    moddir = moddirs[0]
    kver = moddir.name
    subprocess.run(["depmod", "-b", str(root), kver], check=True)
    all_paths = [line.partition(":")[0] for line in (moddir / "modules.dep").read_text().splitlines()]
    entries = read_list()
    devicetree = devicetree_modules(moddir, dtb_compatibles(root, kver))
    wanted: set[str] = set()
    initramfs: set[str] = set()
    for pattern, in_initramfs in entries:
        if pattern == "@devicetree":
            names = devicetree
        else:
            names = {module_name(p) for p in all_paths if fnmatch.fnmatchcase(p.split(".ko")[0], "kernel/" + pattern)}
        if not names:
            raise SystemExit(f"slim.py: {MODULE_LIST.name}: {pattern!r} matches no module of {kver}")
        wanted |= names
        if in_initramfs:
            initramfs |= names
    kept = closure(moddir, wanted)
    # The initramfs gets the closure too: initramfs-tools adds hard dependencies, not soft ones.
    initramfs = {module_name(p) for p in closure(moddir, initramfs)}
    before = sum((moddir / p).stat().st_size for p in all_paths)
    for path in all_paths:
        if path not in kept:
            (moddir / path).unlink()
    for folder in sorted((moddir / "kernel").rglob("*"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    subprocess.run(["depmod", "-b", str(root), kver], check=True)
    record = root / KEPT_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("".join(f"{module_name(p)}\n" for p in sorted(kept, key=module_name)))
    (root / INITRAMFS_MODULES).write_text(
        "# Written by image/slim.py from image/kernel-modules.txt (lines marked `initramfs`).\n"
        + "".join(f"{name}\n" for name in sorted(initramfs))
    )
    after = sum((moddir / p).stat().st_size for p in kept)
    print(
        f"slim.py: kernel modules: kept {len(kept)} of {len(all_paths)} "
        f"({after / 1e6:.1f} of {before / 1e6:.1f} MB), {len(devicetree)} from the DTBs, "
        f"{len(initramfs)} named for the initramfs"
    )


def wifi_firmware_names() -> list[str]:
    names = []
    for line in WIFI_FIRMWARE.read_text().splitlines():
        fields = line.partition("#")[0].split()
        if len(fields) == 3 and fields[2] in ("required", "unavailable"):
            names.append(fields[1])
    return names


def slim_firmware(root: Path) -> None:
    firmware = root / "usr/lib/firmware"
    names = wifi_firmware_names()
    keep: set[Path] = set()
    for folder in ("brcm", "cypress"):
        for path in (firmware / folder).glob("*") if (firmware / folder).is_dir() else []:
            if any(path.name.startswith(name + ".") for name in names):
                keep.add(path)
                if path.is_symlink():  # e.g. brcm/brcmfmac43455-sdio.bin -> ../cypress/cyfmac43455-sdio.bin
                    keep.add(Path(os.path.normpath(path.parent / os.readlink(path))))
    removed = 0
    for folder in ("brcm", "cypress"):
        for path in (firmware / folder).glob("*") if (firmware / folder).is_dir() else []:
            if path not in keep and (path.is_file() or path.is_symlink()):
                removed += path.lstat().st_size
                path.unlink()
    print(
        f"slim.py: Wi-Fi firmware: kept {len(keep)} files for {', '.join(sorted(set(names)))}; removed {removed / 1e6:.1f} MB"
    )


def remove_listed(root: Path) -> None:
    for pattern, reason in REMOVE:
        paths = glob.glob(str(root / pattern))
        size = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
        for path in paths:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        print(f"slim.py: removed {pattern} ({len(paths)} files, {size / 1e6:.1f} MB): {reason}")


def main() -> None:
    if len(sys.argv) != 2 or not Path(sys.argv[1], "usr/lib/modules").is_dir():
        raise SystemExit("usage: slim.py ROOTFS  (a root folder with usr/lib/modules)")
    root = Path(sys.argv[1])
    slim_modules(root)
    slim_firmware(root)
    remove_listed(root)


if __name__ == "__main__":
    main()
