"""The device's update decisions, sans-IO: release announcements and download progress in,
effects out (fetch a release feed, drop it, install it, publish a status).

Only `release` entries of the owner's control feed reach this (device/service.py applies that
feed alone; any other feed's blocks are chat). The latest announcement meant for this device
is the owner's wish: a version above the running one is fetched (below it only with
`downgrade`), one equal to it is done, and one that failed or was rolled back here
(`failed.json`, device/releases.py) is never tried again: the owner publishes a new version.

The status the device publishes in its own feed (one `{"type": "status", ...}` block per change;
timelines and `hyperpi chat view` skip them) is what `hyperpi release status` shows:

    {"type": "status", "version": "0.1.0", "time": ms,
     "update": {"version": "0.2.0", "state": "downloading", "progress": 40}}

with state downloading (progress in PROGRESS_STEP steps), installing, installed (restarting
into it), running, failed (reason) or rolled back (reason); and "packages", the distributions
the running environment has ("name==version"), so the owner's host can say which wheels a
release must bring (hyperpi_host/release.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hyperpi import blockjson
from hyperpi.hypercore import Core, HypercoreError

from .bundle import parse_version
from .control import Release

PROGRESS_STEP = 20  # percent between published download statuses: a few blocks per release
STATUS_SCAN_BLOCKS = 256  # how far back a device's feed is searched for its latest status block
ROLLED_BACK = "rolled back: "  # the prefix of the launcher's reasons in failed.json (device/launch.py)


def latest_status(feed: Core) -> dict[str, Any] | None:
    """The newest status block in the last STATUS_SCAN_BLOCKS of a device's feed: what the
    device publishes next is compared with it, and `hyperpi release status` shows it."""
    end = feed.contiguous_length
    for index in range(end - 1, max(-1, end - 1 - STATUS_SCAN_BLOCKS), -1):
        try:
            value = blockjson.decode(feed.get(index))
        except (ValueError, KeyError, HypercoreError):
            continue
        if isinstance(value, dict) and value.get("type") == "status":
            return value
    return None


@dataclass(frozen=True)
class Fetch:
    """Replicate the release feed (it is verified block by block like every core)."""

    release: Release


@dataclass(frozen=True)
class Drop:
    """Stop replicating this release feed and forget its blocks."""

    key: bytes


@dataclass(frozen=True)
class Install:
    """Every block is held: check, install and switch (device/install.py), then report back."""

    release: Release


@dataclass(frozen=True)
class Publish:
    """Append this status to the own feed."""

    status: dict[str, Any]


Effect = Fetch | Drop | Install | Publish


def newer(version: str, than: str) -> int:
    """1, 0 or -1 as `version` is above, equal to or below `than`."""
    a, b = parse_version(version), parse_version(than)
    return (a > b) - (a < b)


class Updater:
    def __init__(
        self,
        running: str,
        failed: dict[str, str] | None = None,
        published: dict | None = None,
        packages: tuple[str, ...] = (),
    ) -> None:
        self.running = running
        self.packages = packages  # "name==version" of what this environment has (for the owner's host)
        self.failed = dict(failed or {})  # version -> reason ("failed: ..." or "rolled back: ...")
        self.offered: Release | None = None
        self.target: Release | None = None  # being fetched or installed
        self.state = "idle"  # idle, downloading, installing, installed
        self.progress = 0
        self._published = _comparable(published)

    # -- inputs -------------------------------------------------------------------------
    def offer(self, release: Release) -> None:
        """A release entry meant for this device (later entries replace earlier ones); `decide`
        acts on the last one, so a control feed replayed at start fetches only that."""
        self.offered = release

    def decide(self) -> list[Effect]:
        effects: list[Effect] = []
        wanted = self._wanted()
        if self.target is not None and self.state == "downloading" and wanted != self.target:
            effects.append(Drop(self.target.key))
            self.target, self.state = None, "idle"
        if wanted is not None and self.target is None and self.state == "idle":
            self.target, self.state, self.progress = wanted, "downloading", 0
            effects.append(Fetch(wanted))
        return effects + self._publish()

    def on_progress(self, held: int) -> list[Effect]:
        """The target feed's first `held` blocks are held (verified)."""
        if self.target is None or self.state != "downloading":
            return []
        if held >= self.target.length:
            self.state, self.progress = "installing", 100
            return [Install(self.target), *self._publish()]
        percent = held * 100 // self.target.length
        if percent // PROGRESS_STEP == self.progress // PROGRESS_STEP:
            self.progress = percent
            return []  # the screen shows each percent; the feed gets a block per step
        self.progress = percent
        return self._publish()

    def on_installed(self, error: str | None) -> list[Effect]:
        """The install finished: None, or why it failed."""
        if self.target is None or self.state != "installing":
            return []
        if error is None:
            self.state = "installed"
            return self._publish()
        return self.fail(error)

    def fail(self, error: str) -> list[Effect]:
        """The target cannot be fetched or installed: give it up for good."""
        target = self.target
        if target is None or self.state not in ("downloading", "installing"):
            return []
        self.failed[target.version] = f"failed: {error}"
        self.target, self.state = None, "idle"
        return [Drop(target.key), *self._publish()]

    # -- outputs ------------------------------------------------------------------------
    def _wanted(self) -> Release | None:
        release = self.offered
        if release is None or release.version in self.failed:
            return None
        order = newer(release.version, self.running)
        return release if order > 0 or (order < 0 and release.downgrade) else None

    def update_status(self) -> dict[str, Any] | None:
        if self.target is not None:
            update: dict[str, Any] = {"version": self.target.version, "state": self.state}
            if self.state == "downloading":
                update["progress"] = self.progress
            return update
        release = self.offered
        if release is None:
            return None
        if release.version == self.running:
            return {"version": release.version, "state": "running"}
        reason = self.failed.get(release.version)
        if reason is not None:
            state, _, why = reason.partition(": ")
            return {"version": release.version, "state": state, "reason": why}
        return None  # an older release without downgrade: nothing to say

    def status(self) -> dict[str, Any]:
        value: dict[str, Any] = {"type": "status", "version": self.running}
        if self.packages:
            value["packages"] = list(self.packages)
        update = self.update_status()
        if update is not None:
            value["update"] = update
        return value

    def screen_line(self) -> str | None:
        """The status line while an update is under way ("update 0.3.0: 42%")."""
        if self.target is None:
            return None
        if self.state == "downloading":
            return f"update {self.target.version}: {self.progress}%"
        return f"update {self.target.version}: {self.state}"

    def _publish(self) -> list[Effect]:
        status = self.status()
        if _comparable(status) == self._published:
            return []
        self._published = _comparable(status)
        return [Publish(status)]


def _comparable(status: dict | None) -> object:
    if not isinstance(status, dict):
        return None
    return {k: v for k, v in status.items() if k != "time"}
