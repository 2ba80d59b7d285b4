"""Read and write files on a FAT partition inside a disk image with mtools (no mount, no root).

mtools addresses a partition inside an image file as `image@@offset`; MTOOLS_SKIP_CHECK lets it
accept the geometry of a partition that is not a whole floppy or disk. Errors become FatError
with mtools' own message, one line.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from hyperpi_host.partitions import Partition

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_LOWER_CASE": "1"}
TIMEOUT_S = 60  # mtools on a few files takes milliseconds; a hang means a broken image


class FatError(Exception):
    """mtools failed; str() is one line."""


def _drive(image: Path, part: Partition) -> str:
    return f"{image}@@{part.start}"


def _mtools(args: list[str], what: str) -> bytes:
    try:
        done = subprocess.run(
            args, capture_output=True, timeout=TIMEOUT_S, check=False, env={**os.environ, **MTOOLS_ENV}
        )
    except FileNotFoundError:
        raise FatError(f"{args[0]} not found: install mtools (apt-get install mtools)") from None
    except subprocess.TimeoutExpired:
        raise FatError(f"{what}: {args[0]} did not finish in {TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
        raise FatError(f"{what}: {lines[-1]}")
    return done.stdout


def read_file(image: Path, part: Partition, path: str) -> bytes | None:
    """The bytes of `path` (absolute, e.g. /hyperpi/device.toml), or None if it is absent."""
    if path.lower() not in {p.lower() for p in list_files(image, part)}:
        return None
    return _mtools(["mcopy", "-n", "-i", _drive(image, part), f"::{path}", "-"], f"reading {path}")


def list_files(image: Path, part: Partition) -> list[str]:
    """Every file's absolute path on the partition (lower case: FAT ignores case)."""
    out = _mtools(["mdir", "-/", "-b", "-i", _drive(image, part), "::/"], "listing the FAT partition")
    return [line.removeprefix("::") for line in out.decode(errors="replace").splitlines() if line.strip()]


def make_dirs(image: Path, part: Partition, path: str) -> None:
    """Create folder `path` and its parents, where missing."""
    existing = {p.lower() for p in list_dirs(image, part)}
    current = PurePosixPath("/")
    for name in PurePosixPath(path).parts[1:]:
        current = current / name
        if str(current).lower() not in existing:
            _mtools(["mmd", "-i", _drive(image, part), f"::{current}"], f"creating {current}")


def list_dirs(image: Path, part: Partition) -> list[str]:
    out = _mtools(["mdir", "-/", "-i", _drive(image, part), "::/"], "listing the FAT partition")
    dirs = []
    for line in out.decode(errors="replace").splitlines():
        # `mdir -/` prints a "Directory for ::/path" header per folder.
        if line.startswith("Directory for ::"):
            dirs.append(line[len("Directory for ::") :].strip() or "/")
    return dirs


def write_file(image: Path, part: Partition, path: str, data: bytes) -> None:
    """Create or replace `path` with `data` (never use this for secrets: FAT has no permissions)."""
    make_dirs(image, part, str(PurePosixPath(path).parent))
    with tempfile.NamedTemporaryFile(prefix="hyperpi-fat-") as tmp:
        tmp.write(data)
        tmp.flush()
        _mtools(["mcopy", "-o", "-i", _drive(image, part), tmp.name, f"::{path}"], f"writing {path}")
