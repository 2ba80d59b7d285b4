"""Where the host keeps its state: keys, the owner's feeds, provisioned devices.

The home directory is `$HYPERPI_HOME`, else `$XDG_CONFIG_HOME/hyperpi`, else `~/.config/hyperpi`.
It and every folder below it are created mode 0700. Secret files are written 0600 and atomically
(a temporary file beside the target, fsync, rename), so a crash leaves the old file or the new one,
never half a key. A secret that other users can read is refused, with the command that fixes it:
the key may already be leaked, and silently tightening it would hide that.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from hyperpi_host.cli import UserError

HOME_ENV = "HYPERPI_HOME"
DIR_MODE = 0o700
SECRET_MODE = 0o600
# Secrets are a few hundred bytes; a larger "secret" file is a mistake (wrong file given), and
# reading it whole could be expensive, so stop early.
MAX_SECRET_BYTES = 64 * 1024


def hyperpi_home() -> Path:
    """The host's state directory, created 0700 if missing."""
    return ensure_dir(home_path())


def home_path() -> Path:
    """The host's state directory, not created: for lookups that must not leave a folder behind."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "hyperpi"


def home_subdir(name: str) -> Path:
    """A folder under the home directory (`keys`, `devices`, `store`, ...), created 0700."""
    return ensure_dir(hyperpi_home() / name)


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700 if missing; an existing folder is left as it is."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {path}: {error.strerror}; set {HOME_ENV} to a writable folder") from None
    if not path.is_dir():
        raise UserError(f"{path} is not a folder; move it away or set {HOME_ENV} elsewhere")
    return path


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file atomically with mode 0600 (never visible to others, not even briefly)."""
    write_atomic(path, data, SECRET_MODE)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` in one step: a crash leaves the old or the new content."""
    ensure_dir(path.parent)
    # mkstemp creates the file 0600, so a secret is never readable by others, even before chmod.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others may read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        # Check the opened file itself, so a swap between check and read cannot slip through.
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise UserError(
                f"{path} is readable by other users; fix with: chmod 600 {path} "
                "(and replace the key if others may have copied it)"
            )
        data = handle.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise UserError(f"{path} is too large to be a hyperpi secret")
    return data


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
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
