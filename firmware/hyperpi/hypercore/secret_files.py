"""Files that hold secrets: written in one atomic step as 0600, read only while no one else may.

Writing is hyperpi/durable.py's `write_atomic` (0600 is its default mode). Behind every key file
of the project: a core's secret key (hypercore/storage.py), the device's Noise key
(device/main.py), and the host's key files, exports and peer key (hyperpi_host/home.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hyperpi.durable import fsync_dir, write_atomic

from .errors import StorageError

SECRET_MODE = 0o600
# Secrets are a few hundred bytes; a larger "secret" file is a mistake (the wrong file given),
# and reading it whole could be expensive, so stop early.
MAX_SECRET_BYTES = 64 * 1024

__all__ = ["MAX_SECRET_BYTES", "SECRET_MODE", "SecretFileError", "fsync_dir", "read_secret", "write_atomic"]


class SecretFileError(StorageError):
    """A secret file that must not be used: readable by others, not a file, too large. One line."""


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
