"""The thin asyncio adapter around the update decisions (device/update.py).

`UpdateRunner` takes the owner's release entries from the service (which reads them from the
control feed alone), carries out the Updater's effects (open and replicate the release feed,
install it with device/install.py, append status blocks to the own feed, show progress on the
status line), and asks main to exit with EXIT_UPDATED once `current` points at the new version.
A download cut by a restart resumes by itself: the release core is in the store, and the
announcement is read again from the control feed at start.

Updates are installed only when the launcher started the service (`HYPERPI_LAUNCHED`,
device/launch.py): without it nothing would run the new version or roll it back, so a
`--simulate` run on a laptop only logs that a release was announced.

`confirm_later` is the new version's side of rollback: started after READY, it deletes
`pending.json` once the service has stayed up HEALTHY_SECONDS (`HYPERPI_HEALTHY_SECONDS`
overrides it, for tests), and removes release folders no longer needed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hyperpi.hypercore import HypercoreError

from .control import Release
from .install import EXIT_UPDATED, InstallError, finish, prepare, prune
from .launch import FACTORY_SITE_ENV, LAUNCHED_ENV
from .releases import Releases
from .service import DeviceService
from .update import Drop, Effect, Fetch, Install, Publish, Updater, latest_status

log = logging.getLogger("hyperpi.device")

# How long a new version must run after READY before it confirms itself; the watchdog
# (WatchdogSec=30 in the unit) would have restarted a hung loop by then.
HEALTHY_SECONDS = 60.0
HEALTHY_ENV = "HYPERPI_HEALTHY_SECONDS"


def healthy_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(HEALTHY_ENV, HEALTHY_SECONDS)))
    except ValueError:
        return HEALTHY_SECONDS


MAX_PACKAGES = 200  # distributions listed in a status (an appliance's environment has ~30)


def visible_packages() -> tuple[str, ...]:
    """ "name==version" of every distribution on sys.path, from the names of their .dist-info
    folders: no metadata is parsed, so this costs a few directory listings."""
    found = set()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and "-" in name:
                dist, _, version = name[: -len(".dist-info")].rpartition("-")
                found.add(f"{re.sub(r'[-_.]+', '-', dist).lower()}=={version}")
    return tuple(sorted(found)[:MAX_PACKAGES])


class UpdateRunner:
    def __init__(
        self,
        service: DeviceService,
        state_dir: Path,
        running: str,
        request_exit: Callable[[int], None],
        *,
        enabled: bool | None = None,
    ) -> None:
        self.service = service
        self.releases = Releases(state_dir)
        self.enabled = os.environ.get(LAUNCHED_ENV) == "1" if enabled is None else enabled
        self.request_exit = request_exit
        packages = visible_packages() if self.enabled else ()
        self.updater = Updater(running, self.releases.failed(), latest_status(service.own), packages)
        self._unsubscribe: Callable[[], None] | None = None
        self._install: asyncio.Task[None] | None = None
        self._said_disabled = False
        self._cleared: set[bytes] = set()  # release feeds whose blocks were freed
        self.exit_code: int | None = None
        service.on_release = self.offer
        if service.last_release is not None:
            self.offer(service.last_release)
        elif self.enabled:
            self._do(self.updater.decide())  # the running version, for `hyperpi release status`

    # -- inputs ---------------------------------------------------------------------------
    def offer(self, release: Release) -> None:
        if not self.enabled:
            if not self._said_disabled:
                log.info("release %s announced; not started by hyperpi-launch, so not installing", release.version)
                self._said_disabled = True
            return
        self.updater.offer(release)
        self._do(self.updater.decide())
        if (
            self.updater.target is None
            and release.key not in self._cleared
            and not self.service.feed_in_use(release.key)
        ):
            # Installed, failed or rolled back: its blocks (up to MAX_RELEASE_BYTES) are not needed.
            self._cleared.add(release.key)
            try:
                self.service.store.clear_core(release.key)
            except HypercoreError as e:
                log.warning("release feed of %s not cleared from the store: %s", release.version, e)

    def _on_release_event(self, _event: object = None) -> None:
        core = self.service.release_core
        if core is not None:
            self._do(self.updater.on_progress(core.contiguous_length))

    # -- effects --------------------------------------------------------------------------
    def _do(self, effects: list[Effect]) -> None:
        fetched = False
        queue = collections.deque(effects)  # effects that follow from one go after the batch
        while queue:
            effect = queue.popleft()
            if isinstance(effect, Fetch):
                try:
                    core = self.service.fetch_release(effect.release.key)
                except ValueError as e:
                    log.error("update %s refused: %s", effect.release.version, e)
                    self._record_failed(effect.release.version, str(e))
                    queue.extend(self.updater.fail(str(e)))
                    continue
                log.info(
                    "update %s: fetching %d blocks (%d bytes) from the owner's release feed, %d held already",
                    effect.release.version,
                    effect.release.length,
                    effect.release.size,
                    min(core.contiguous_length, effect.release.length),
                )
                self._unsubscribe = core.subscribe(self._on_release_event)
                fetched = True
            elif isinstance(effect, Drop):
                if self._unsubscribe is not None:
                    self._unsubscribe()
                    self._unsubscribe = None
                self.service.drop_release(effect.key)
            elif isinstance(effect, Install):
                self._install = asyncio.get_running_loop().create_task(self._run_install(effect.release))
            elif isinstance(effect, Publish):
                update = effect.status.get("update")
                log.info("status: running %s%s", effect.status["version"], f", update {update}" if update else "")
                self.service.publish_status({**effect.status, "time": int(time.time() * 1000)})
        if fetched:  # resumed: what the store already holds counts (after this batch's statuses)
            self._on_release_event()
        line = self.updater.screen_line()
        if line != self.service.app.update_line:
            self.service.app.update_line = line
            self.service.changed()

    async def _run_install(self, release: Release) -> None:
        core = self.service.release_core
        assert core is not None
        error = None
        try:
            name, manifest = prepare(self.releases, release, core.get)  # reads the core: on the loop
            factory_site = os.environ.get(FACTORY_SITE_ENV, "").split(os.pathsep)
            await asyncio.to_thread(finish, self.releases, name, release, manifest, factory_site=factory_site)
        except (InstallError, OSError, KeyError, HypercoreError) as e:
            error = str(e) or type(e).__name__
            log.error("update %s failed: %s", release.version, error)
            self._record_failed(release.version, error)
        self._do(self.updater.on_installed(error))
        if error is None:
            self.exit_code = EXIT_UPDATED
            self.request_exit(EXIT_UPDATED)

    def _record_failed(self, version: str, error: str) -> None:
        """In failed.json: not tried again after a restart either."""
        with contextlib.suppress(OSError):
            self.releases.record_failed(version, f"failed: {error}")

    # -- the new version's confirmation ---------------------------------------------------
    async def confirm_later(self, stop: asyncio.Event) -> None:
        """After READY: confirm a pending switch to this very environment once healthy."""
        pending = self.releases.pending()
        current = self.releases.current()
        if pending is None or current != pending.version or not self._running_from(current):
            return
        wait = healthy_seconds()
        log.info("update to %s: confirming after %.0f s of healthy running", current, wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set():
            return
        self.releases.clear_pending()
        log.info("update to %s confirmed", current)
        await asyncio.to_thread(prune, self.releases, {current, *([pending.previous] if pending.previous else [])})

    def _running_from(self, name: str) -> bool:
        with contextlib.suppress(OSError):
            return Path(sys.prefix).resolve() == (self.releases.path(name) / "venv").resolve()
        return False
