"""The installed releases under the state directory, and the files the launcher decides by.

    <state>/releases/<version>-<id>/venv/         an environment (a venv cannot be moved once
                                                  made, so it is built where it stays)
    <state>/releases/<version>-<id>/release.json  written last, after everything is on disk:
                                                  without it the folder is never run
    <state>/releases/current -> <version>-<id>    the one to run; missing: the factory one
    <state>/releases/pending.json                 {"version": "<version>-<id>", "previous",
                                                  "attempts"}: a switch not yet confirmed
    <state>/releases/failed.json              {version: reason}: never tried again, and reported

Every change is one atomic step (a rename, or an unlink followed by a folder fsync), so a power
cut at any moment leaves `current` naming a complete environment or nothing (the factory one).
The installer (device/install.py) writes `pending.json` before it switches `current`; the
launcher (device/launch.py) counts starts in it and switches back; the new version deletes it
once healthy (device/updating.py).

Standard library only: the launcher imports this, and it must start even when a release is broken.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hyperpi.durable import fsync_dir, write_atomic

RELEASES_DIR = "releases"
CURRENT = "current"
PENDING = "pending.json"
FAILED = "failed.json"
MANIFEST = "release.json"
VENV = "venv"
MAX_STATE_FILE_BYTES = 64 * 1024  # these files hold a few lines; a bigger one is damaged
MAX_FAILED = 32  # versions remembered as failed; the oldest are forgotten


@dataclass(frozen=True)
class Pending:
    version: str  # the release folder's name, <version>-<id>
    previous: str | None  # None: the factory version
    attempts: int  # starts of `version` so far, counted by the launcher


def _read_json(path: Path) -> object:
    """The JSON in a state file; None if it is missing or damaged (a damaged one is logged by
    the caller's decision, never a traceback)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_STATE_FILE_BYTES + 1)
        if len(data) > MAX_STATE_FILE_BYTES:
            return None
        return json.loads(data)
    except (OSError, ValueError):
        return None


class Releases:
    """The releases folder of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / RELEASES_DIR

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def executable(self, name: str) -> Path:
        return self.root / name / VENV / "bin" / "hyperpi-device"

    def usable(self, name: str) -> bool:
        """A complete environment (its release.json is written only once all of it is on disk)."""
        return (self.root / name / MANIFEST).is_file() and os.access(self.executable(name), os.X_OK)

    def version_of(self, name: str) -> str:
        """The version a release folder holds (its release.json, else its name's first part)."""
        value = _read_json(self.root / name / MANIFEST)
        version = value.get("version") if isinstance(value, dict) else None
        return version if isinstance(version, str) else name.rsplit("-", 1)[0]

    def installed(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        )

    # -- current ------------------------------------------------------------------------
    def current(self) -> str | None:
        """The version `current` points at; None: the factory one."""
        try:
            target = os.readlink(self.root / CURRENT)
        except OSError:
            return None
        name = Path(target).name
        return name if name and not name.startswith(".") and "/" not in target else None

    def set_current(self, version: str | None) -> None:
        """Point `current` at `version` (None: the factory one) in one step."""
        self.ensure()
        link = self.root / CURRENT
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        else:
            tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(version, tmp)
            os.replace(tmp, link)
        fsync_dir(self.root)

    # -- pending ------------------------------------------------------------------------
    def pending(self) -> Pending | None:
        value = _read_json(self.root / PENDING)
        if not isinstance(value, dict):
            return None
        version, previous, attempts = value.get("version"), value.get("previous"), value.get("attempts")
        if not isinstance(version, str) or not isinstance(attempts, int) or isinstance(attempts, bool):
            return None
        if previous is not None and not isinstance(previous, str):
            return None
        return Pending(version, previous, max(attempts, 0))

    def set_pending(self, pending: Pending) -> None:
        self.ensure()
        value = {"version": pending.version, "previous": pending.previous, "attempts": pending.attempts}
        write_atomic(self.root / PENDING, json.dumps(value).encode())

    def clear_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / PENDING)
            fsync_dir(self.root)

    # -- failed -------------------------------------------------------------------------
    def failed(self) -> dict[str, str]:
        value = _read_json(self.root / FAILED)
        if not isinstance(value, dict):
            return {}
        return {str(k): str(v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    def record_failed(self, version: str, reason: str) -> None:
        self.ensure()
        failed = self.failed()
        failed.pop(version, None)
        failed[version] = reason[:300]
        while len(failed) > MAX_FAILED:
            failed.pop(next(iter(failed)))
        write_atomic(self.root / FAILED, json.dumps(failed).encode())
