"""Files replaced in one step that survive a power cut (standard library only).

`write_atomic` is the one implementation behind every file the project replaces whole: secret
keys (hypercore/secret_files.py re-exports it with its 0600 default), the update launcher's
state files (device/releases.py, which must not import the core), the host's records.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
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
