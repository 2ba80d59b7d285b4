"""Files that hold secrets: written in one atomic step as 0600, read only while no one else may.

The one implementation behind every key file of the project: a core's secret key
(hypercore/storage.py), the device's Noise key (device/main.py), and the host's key files,
exports and peer key (hyperpi_host/home.py).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from .errors import StorageError

SECRET_MODE = 0o600
# Secrets are a few hundred bytes; a larger "secret" file is a mistake (the wrong file given),
# and reading it whole could be expensive, so stop early.
MAX_SECRET_BYTES = 64 * 1024


class SecretFileError(StorageError):
    """A secret file that must not be used: readable by others, not a file, too large. One line."""


def write_atomic(path: Path, data: bytes, mode: int = SECRET_MODE) -> None:
    """Replace `path` with `data` in one step (a crash leaves the old or the new content), then
    fsync its folder so the rename survives a power cut. The temporary file is created 0600,
    so a secret is never readable by others, not even briefly; `mode` is set before the rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def read_secret(path: Path, max_bytes: int = MAX_SECRET_BYTES) -> bytes:
    """The content of a secret file. FileNotFoundError if there is none; SecretFileError if it
    cannot be read, is not a regular file, group or others may read it, or is over `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise SecretFileError(f"cannot read {path}: {error.strerror}") from None
    # Check the opened file itself, so a swap between check and read cannot slip through.
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SecretFileError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_mode & 0o077:
            raise SecretFileError(
                f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); fix with: "
                f"chmod 600 {path} (and replace the key if others may have copied it)"
            )
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SecretFileError(f"{path} is too large to be a hyperpi secret (over {max_bytes} bytes)")
    return data


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in folder `path` durable; a filesystem that cannot open or sync
    a folder (some FUSE ones) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
