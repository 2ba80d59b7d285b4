"""Read and write files in an ext4 partition inside a disk image with debugfs (no mount, no root).

e2fsprogs opens a partition inside an image file as `image?offset=N`. debugfs lets us set a new
file's mode and owner directly (`set_inode_field`), which is how secrets land in the image as
0600 files owned by the service user without root on the host. debugfs exits 0 even when a
command fails, so every command's error output is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hyperpi_host.partitions import Partition

TIMEOUT_S = 60  # a handful of debugfs commands take milliseconds; a hang means a broken image
# Temporary copies of secrets go to RAM where the host has it, so they never reach a disk.
RAM_DIR = Path("/dev/shm")
BANNER = re.compile(r"^debugfs [0-9.]+ \(")


class Ext4Error(Exception):
    """debugfs failed or the file system is not what we expect; str() is one line."""


@dataclass(frozen=True)
class Inode:
    mode: int  # permission bits, e.g. 0o600
    file_type: str  # "regular", "directory", "symlink", ...
    uid: int
    gid: int
    size: int


def _device(image: Path, part: Partition) -> str:
    return f"{image}?offset={part.start}"


def debugfs(image: Path, part: Partition, commands: list[str], write: bool = False) -> bytes:
    """Run debugfs commands on the partition; Ext4Error with debugfs' message if any failed."""
    for command in commands:
        if "\n" in command:
            raise Ext4Error("a debugfs command must be one line")
    args = ["debugfs"] + (["-w"] if write else []) + ["-f", "-", _device(image, part)]
    try:
        done = subprocess.run(
            args, input="\n".join(commands).encode() + b"\n", capture_output=True, timeout=TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise Ext4Error("debugfs not found: install e2fsprogs (apt-get install e2fsprogs)") from None
    except subprocess.TimeoutExpired:
        raise Ext4Error(f"debugfs did not finish in {TIMEOUT_S} s") from None
    errors = [
        line for line in done.stderr.decode(errors="replace").splitlines() if line.strip() and not BANNER.match(line)
    ]
    if done.returncode != 0 or errors:
        raise Ext4Error(f"debugfs: {errors[0] if errors else f'exit code {done.returncode}'}")
    return done.stdout


def stat(image: Path, part: Partition, path: str) -> Inode | None:
    """The inode of `path`, or None if there is no such file."""
    try:
        out = debugfs(image, part, [f"stat {_quote(path)}"]).decode(errors="replace")
    except Ext4Error as error:
        if "File not found" in str(error):
            return None
        raise
    head = re.search(r"Type: (\S+)\s+Mode:\s+(\d+)", out)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    size = re.search(r"Size: (\d+)", out)
    if not (head and owner and size):
        raise Ext4Error(f"cannot read the inode of {path} from debugfs' output")
    return Inode(int(head.group(2), 8), head.group(1), int(owner.group(1)), int(owner.group(2)), int(size.group(1)))


def read_file(image: Path, part: Partition, path: str) -> bytes | None:
    """The bytes of a regular file, or None if there is no such file."""
    inode = stat(image, part, path)
    if inode is None:
        return None
    if inode.file_type != "regular":
        raise Ext4Error(f"{path} is a {inode.file_type}, not a file")
    # `cat` writes the raw bytes to stdout; with -f - debugfs also echoes the command line.
    out = subprocess.run(
        ["debugfs", "-R", f"cat {_quote(path)}", _device(image, part)],
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if out.returncode != 0 or len(out.stdout) != inode.size:
        raise Ext4Error(f"cannot read {path} from the image")
    return out.stdout


def write_file(image: Path, part: Partition, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Create or replace a regular file with exactly this mode and owner.

    The folder must exist. The data passes through a 0600 file in a 0700 folder (in RAM where
    possible) that is removed before this returns.
    """
    p = PurePosixPath(path)
    if not p.is_absolute():
        raise Ext4Error(f"{path}: need an absolute path")
    existing = stat(image, part, path)
    if existing is not None and existing.file_type != "regular":
        raise Ext4Error(f"{path} exists and is a {existing.file_type}")
    parent = stat(image, part, str(p.parent))
    if parent is None or parent.file_type != "directory":
        raise Ext4Error(f"{p.parent} is not a folder in the image (not a hyperpi image?)")
    with tempfile.TemporaryDirectory(prefix="hyperpi-", dir=RAM_DIR if RAM_DIR.is_dir() else None) as tmp:
        source = Path(tmp) / "data"
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        commands = [f"cd {_quote(str(p.parent))}"]
        if existing is not None:
            commands.append(f"rm {_quote(p.name)}")
        commands += [
            f"write {_quote(str(source))} {_quote(p.name)}",
            f"set_inode_field {_quote(p.name)} mode 0{0o100000 | mode:o}",
            f"set_inode_field {_quote(p.name)} uid {uid}",
            f"set_inode_field {_quote(p.name)} gid {gid}",
        ]
        debugfs(image, part, commands, write=True)
    written = stat(image, part, path)
    if written is None or written.mode != mode or (written.uid, written.gid) != (uid, gid) or written.size != len(data):
        raise Ext4Error(f"writing {path} into the image did not take effect")


def make_dir(image: Path, part: Partition, path: str, mode: int, uid: int, gid: int) -> None:
    """Create a folder (its parent must exist) with this mode and owner, unless it exists."""
    existing = stat(image, part, path)
    if existing is not None:
        if existing.file_type != "directory":
            raise Ext4Error(f"{path} exists and is not a folder")
        return
    q = _quote(path)
    debugfs(
        image,
        part,
        [
            f"mkdir {q}",
            f"set_inode_field {q} mode 0{0o040000 | mode:o}",
            f"set_inode_field {q} uid {uid}",
            f"set_inode_field {q} gid {gid}",
        ],
        write=True,
    )


def symlink(image: Path, part: Partition, path: str, target: str) -> None:
    """Create the symbolic link `path` -> `target`, unless `path` already exists."""
    if stat(image, part, path) is None:
        debugfs(image, part, [f"symlink {_quote(path)} {_quote(target)}"], write=True)


def _quote(path: str) -> str:
    # debugfs splits command lines on white space and honours double quotes.
    if '"' in path:
        raise Ext4Error(f"unsupported character in path {path!r}")
    return f'"{path}"' if any(c.isspace() for c in path) else path
