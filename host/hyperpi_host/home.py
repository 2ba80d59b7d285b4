"""Where the host keeps its state: keys, the owner's feeds, provisioned devices.

The home directory is `$HYPERPI_HOME`, else `$XDG_CONFIG_HOME/hyperpi`, else `~/.config/hyperpi`.
It and every folder below it are created mode 0700. Secret files are written 0600 and atomically
(hyperpi/hypercore/secret_files.py: a temporary file beside the target, fsync, rename), so a crash
leaves the old file or the new one, never half a key. A secret that other users can read is
refused, with the command that fixes it: the key may already be leaked, and silently tightening
it would hide that.
"""

from __future__ import annotations

import os
from pathlib import Path

from hyperpi.hypercore import secret_files

HOME_ENV = "HYPERPI_HOME"
DIR_MODE = 0o700
SECRET_MODE = secret_files.SECRET_MODE
MAX_SECRET_BYTES = secret_files.MAX_SECRET_BYTES


class HomeError(Exception):
    """The state directory or a secret file in it cannot be used; the message says what to do.
    The command line prints it as one line (hyperpi_host/cli.py)."""


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
        raise HomeError(f"cannot create {path}: {error.strerror}; set {HOME_ENV} to a writable folder") from None
    if not path.is_dir():
        raise HomeError(f"{path} is not a folder; move it away or set {HOME_ENV} elsewhere")
    return path


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file atomically with mode 0600 (never visible to others, not even briefly)."""
    write_atomic(path, data, SECRET_MODE)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` in one step: a crash leaves the old or the new content."""
    ensure_dir(path.parent)
    secret_files.write_atomic(path, data, mode)


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others may read (HomeError)."""
    try:
        return secret_files.read_secret(path, MAX_SECRET_BYTES)
    except FileNotFoundError:
        raise HomeError(f"{path} does not exist") from None
    except secret_files.SecretFileError as error:
        raise HomeError(str(error)) from None
