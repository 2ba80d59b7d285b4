"""A Hypercore store that one hyperpi process uses at a time, as Node's hypercore locks its storage.

Two writers on one store would each keep their own idea of a feed's head: the second append
would fork the feed. So every host command opens stores through `LockedStore`, which takes an
exclusive `flock` on `hyperpi.lock` in the store folder first and writes its holder (process id
and command) into it. A second process gets one line naming the holder. The lock goes with the
process: a killed holder leaves no stale lock. Within one process the lock is counted, so a
command may open the store it already holds (the owner's control feed while pairing).
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from hyperpi.hypercore import Store

LOCK_FILE = "hyperpi.lock"
MAX_HOLDER_TEXT = 200  # bytes of "pid N: hyperpi chat write" read back; more is not ours


class StoreLockError(Exception):
    """The store folder cannot be locked: another process holds it, or the folder is unusable.
    The command line prints it as one line and exits 1 (hyperpi_host/cli.py)."""


_held: dict[Path, list[int]] = {}  # store folder -> [lock fd, how many opens hold it]


def _holder_text() -> str:
    # The command words only (`hyperpi chat write`), never option values: those may be secrets.
    words = [w for w in sys.argv[1:3] if not w.startswith("-")]
    return f"pid {os.getpid()}: {' '.join(['hyperpi', *words])}"


def acquire(folder: Path) -> None:
    """Hold `folder`'s lock (creating the folder 0700); StoreLockError naming the holder if taken."""
    folder = folder.resolve()
    if folder in _held:
        _held[folder][1] += 1
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StoreLockError(f"cannot use {folder} as a store: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, MAX_HOLDER_TEXT, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise StoreLockError(
            f"the store {folder} is in use by {holder}; stop that command or wait for it to end"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
    _held[folder] = [fd, 1]


def release(folder: Path) -> None:
    folder = folder.resolve()
    entry = _held.get(folder)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[folder]
        os.close(entry[0])  # closing the descriptor drops the flock


class LockedStore(Store):
    """A Store whose folder this process holds the lock of, from open to close."""

    def __init__(self, path: str | Path) -> None:
        self._lock_folder: Path | None = Path(path)
        acquire(Path(path))
        try:
            super().__init__(path)
        except BaseException:
            release(Path(path))
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._lock_folder is not None:  # a second close releases nothing
                release(self._lock_folder)
                self._lock_folder = None
