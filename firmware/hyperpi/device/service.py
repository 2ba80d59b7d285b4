"""The chat service without its network: feeds, follows, control feed, UI, screen.

`DeviceService` owns the store's cores (its own feed, the followed feeds, the owner's control
feed), the timeline and the UI, and redraws the screen when something changes. The network
plugs in from outside through a small seam:

- `cores()` lists the cores to replicate; `on_cores_changed` is called when that list changes
  (a follow or unfollow), so the swarm can join or leave topics;
- `set_network(up, peers)` feeds the status line ("no network", "no peers yet", "2 peers");
- `on_peer_lengths(peer, {feed key: length})` tells which peer holds how much of which feed,
  for the delivery ticks on sent messages.

Blocks arriving by replication reach the timeline through each core's `subscribe` callback.

Never a fork of the own feed: a device whose identity is older than its store's copy of its
own feed (the store was empty, damaged or set aside: `recover_own_feed`) appends nothing
until a peer has told it how long that feed is (`on_remote_head`) and replication brought it
that far, or OWN_FEED_GRACE_SECONDS passed without such a peer. Appending below what a peer
holds would sign a second block N: peers refuse that version for good. Messages sent
meanwhile are held and appended then. A store that is intact needs no wait: every append
is fsynced before it returns (hypercore/storage.py), so no peer can hold more of the own
feed than the store does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from hyperpi.hypercore import Core, CoreEvent, CorruptStore, DiskFull, HypercoreError, Store, z32_encode

from .app import DeviceApp, Send
from .buttons import ButtonEvent
from .config import DeviceConfig
from .control import ControlState, Follow, Release, Rename, SetPresets, Unfollow, parse_entry
from .display import Display
from .timeline import Presets, Timeline, sanitize

log = logging.getLogger("hyperpi.device")

SEEN_FILE = "seen.json"  # how far each feed was seen on screen: unread marks survive restarts
# How long a device recovering its own feed waits for a peer holding it before it appends
# anyway. Peers on a LAN connect within seconds of mDNS starting; a peer that comes later
# with more of the feed than we recovered sees a fork, which replication then reports.
OWN_FEED_GRACE_SECONDS = 30.0
# Messages (button presses) held while the own feed is recovered; later ones are dropped.
MAX_HELD_MESSAGES = 32
RECOVERING_NOTICE = "recovering feed"


def chat_block(text: str, nick: str, now: float) -> bytes:
    """A chat block in the Node tutorial's format (README "The tutorial, with Python and Node": --json)."""
    return json.dumps({"type": "chat", "text": text, "time": int(now * 1000), "nick": nick}).encode()


class DeviceService:
    def __init__(
        self,
        config: DeviceConfig,
        store: Store,
        own: Core,
        *,
        display: Display | None = None,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        recover_own_feed: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.own = own
        self.display = display
        self.state_dir = state_dir
        self._clock = clock
        self.name = config.name
        self.timeline = Timeline(own.key, seen=self._load_seen(), clock=clock)
        self.presets = Presets(config.presets)
        self.app = DeviceApp(config.name, self.timeline, self.presets, clock=clock)
        self.feeds: dict[bytes, Core] = {}  # followed feeds
        self.control: Core | None = None
        self.on_cores_changed: Callable[[], None] | None = None
        # Updates (device/updating.py): the owner's last release entry for this device, who
        # hears of new ones, and the release feed being fetched.
        self.last_release: Release | None = None
        self.on_release: Callable[[Release], None] | None = None
        self.release_core: Core | None = None
        # A status to publish once the service has started (the first block of a new feed is its
        # "online" message) and its own feed is recovered.
        self._held_status: dict | None = None
        self._started = False
        self._control_applied = 0
        self._unsubscribe: dict[bytes, Callable[[], None]] = {}
        self._changed = asyncio.Event()
        self._draw_error: str | None = None  # the last drawing error, logged once while it repeats
        self._recovering = recover_own_feed  # see the module docstring
        self._peer_own_length = -1  # the longest own-feed head a peer told of; -1: none yet
        self._held: list[str] = []  # messages sent while recovering
        self._announce = False
        self._grace: asyncio.TimerHandle | None = None
        if recover_own_feed:
            self.app.notice = RECOVERING_NOTICE
        self._control_state = ControlState(own.key, ((f.key, f.name) for f in config.follows))
        self._watch(own)
        for follow in self._control_state.follows.values():
            self.follow(follow.key, follow.name)
        if config.owner is not None:
            self.control = self._open_core(config.owner)
            self._watch(self.control)
            self._apply_control()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """First start: announce the device on its own feed (the image's boot test reads it).
        Recovering the own feed, wait for a peer first (see the module docstring)."""
        self._announce = self.own.length == 0
        self._started = True
        if not self._recovering:
            self._announce_online()
            self._publish_held_status()
            return
        log.info(
            "own feed: %d blocks in the store; recovering it from peers before appending (at most %.0f s)",
            self.own.length,
            OWN_FEED_GRACE_SECONDS,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a test): only a peer's head ends the wait
        self._grace = loop.call_later(
            OWN_FEED_GRACE_SECONDS, self._recovered, f"no peer told its length in {OWN_FEED_GRACE_SECONDS:.0f} s"
        )

    def on_remote_head(self, core: Core, fork: int, length: int) -> None:
        """A peer holds a signed head of `length` blocks of `core` (its `sync`). A peer holding
        none of the own feed tells nothing: wait for one that holds some, or the grace time."""
        if core is self.own and self._recovering and length > 0:
            self._peer_own_length = max(self._peer_own_length, length)
            self._check_recovered()

    def _check_recovered(self) -> None:
        if self._recovering and 0 <= self._peer_own_length <= self.own.length:
            self._recovered(f"a peer holds {self._peer_own_length} blocks of it")

    def _recovered(self, why: str) -> None:
        if not self._recovering:
            return
        self._recovering = False
        if self._grace is not None:
            self._grace.cancel()
        log.info("own feed recovered (%s): %d blocks, appending from there", why, self.own.length)
        if self.app.notice == RECOVERING_NOTICE:
            self.app.notice = None
        self._announce_online()
        self._publish_held_status()
        held, self._held = self._held, []
        for text in held:
            self.append_chat(text)
        self._changed.set()

    def _announce_online(self) -> None:
        if self._announce and self.own.length == 0:
            self.append_chat(f"{self.name} is online")
        self._announce = False

    def close(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()
        self._save_seen()

    # -- the network seam ------------------------------------------------------------------
    def cores(self) -> list[Core]:
        """Every core this device replicates: its own, the control feed, the followed feeds."""
        extra = [core for core in (self.control, self.release_core) if core is not None]
        return [self.own, *extra, *self.feeds.values()]

    def set_network(self, up: bool, peers: int) -> None:
        if (self.app.network_up, self.app.peers) != (up, peers):
            self.app.network_up, self.app.peers = up, peers
            self._changed.set()

    @property
    def peers_connected(self) -> int:
        return self.app.peers

    def on_peer_lengths(self, peer: object, lengths: dict[bytes, int]) -> None:
        if self.timeline.set_peer_lengths(peer, lengths):
            self._changed.set()

    # -- feeds ----------------------------------------------------------------------------
    def follow(self, key: bytes, name: str) -> None:
        if key == self.own.key:
            return
        self.timeline.names[key] = name
        if key not in self.feeds:
            self.feeds[key] = self._open_core(key)
            self._watch(self.feeds[key])
            if self.on_cores_changed:
                self.on_cores_changed()
        self._changed.set()

    def unfollow(self, key: bytes) -> None:
        core = self.feeds.pop(key, None)
        if core is None:
            return
        self._unsubscribe.pop(key, lambda: None)()
        self.timeline.forget(key)
        self.timeline.names.pop(key, None)
        if self.on_cores_changed:
            self.on_cores_changed()
        self._changed.set()

    def _open_core(self, key: bytes) -> Core:
        """A followed or control feed; one damaged in the store is cleared and fetched again."""
        try:
            return Core.open(self.store, key)
        except CorruptStore as e:
            log.error(
                "feed %s is damaged in the store (%s): cleared, to be fetched again from peers", z32_encode(key)[:16], e
            )
            self.app.notice = "feed repaired"
            self.store.clear_core(key)
            return Core.open(self.store, key)

    def _watch(self, core: Core) -> None:
        self._unsubscribe[core.key] = core.subscribe(lambda event, key=core.key: self._on_core_event(key, event))
        self._read(core.key)

    def _on_core_event(self, key: bytes, event: CoreEvent) -> None:
        self._read(key)
        if key == self.own.key:
            self._check_recovered()  # an upgrade from a peer: recovered that far

    def _read(self, key: bytes) -> None:
        if self.control is not None and key == self.control.key:
            self._apply_control()
            return
        core = self.own if key == self.own.key else self.feeds.get(key)
        if core is None:
            return
        for m in self.timeline.update(core):
            if m.feed != self.own.key:
                log.info("message from %s: %s", self.timeline.name_of(m.feed), m.text)
            self._changed.set()

    def _apply_control(self) -> None:
        """Apply the control feed's new entries in order; malformed ones are logged and skipped."""
        assert self.control is not None
        length = self.control.contiguous_length
        while self._control_applied < length:
            index = self._control_applied
            self._control_applied += 1
            try:
                entry = parse_entry(self.control.get(index))
            except (ValueError, KeyError) as e:
                log.warning("control feed entry %d skipped: %s", index, e)
                continue
            if not self._control_state.meant_for(entry):
                continue
            log.info("control feed: %s %s", entry.kind, entry.name or (entry.release and entry.release.version) or "")
            change = self._control_state.apply(index, entry)
            if isinstance(change, Follow):
                self.follow(change.key, change.name)
            elif isinstance(change, Unfollow):
                self.unfollow(change.key)
            elif isinstance(change, Rename):
                self.name = self.app.name = change.name
            elif isinstance(change, SetPresets):
                self.presets.replace(change.presets)
            elif isinstance(change, Release):
                self.last_release = change
                if self.on_release is not None:
                    self.on_release(change)
            self._changed.set()

    # -- updates (device/updating.py) ------------------------------------------------------
    def feed_in_use(self, key: bytes) -> bool:
        """Whether `key` is the own feed, the control feed or a followed feed: never a release's."""
        return key == self.own.key or (self.control is not None and key == self.control.key) or key in self.feeds

    def fetch_release(self, key: bytes) -> Core:
        """Replicate the release feed `key` (its blocks are verified like every core's);
        ValueError if that key is one of the device's other feeds."""
        if self.feed_in_use(key):
            raise ValueError("the release names one of the device's own, control or followed feeds")
        if self.release_core is not None and self.release_core.key != key:
            self.drop_release(self.release_core.key)
        if self.release_core is None:
            self.release_core = self._open_core(key)
            if self.on_cores_changed:
                self.on_cores_changed()
        return self.release_core

    def drop_release(self, key: bytes) -> None:
        """Stop replicating a release feed and free its blocks."""
        if self.release_core is None or self.release_core.key != key or self.feed_in_use(key):
            return
        self.release_core = None
        if self.on_cores_changed:
            self.on_cores_changed()
        try:
            self.store.clear_core(key)
        except HypercoreError as e:
            log.warning("release feed %s not cleared from the store: %s", z32_encode(key)[:16], e)

    def publish_status(self, status: dict) -> None:
        """Append a status block (device/update.py) to the own feed; the owner's host reads it."""
        if self._recovering or not self._started:
            self._held_status = status  # only the latest is worth publishing
            return
        try:
            self.own.append([json.dumps(status, separators=(",", ":")).encode()])
        except HypercoreError as e:
            log.error("status not published (%s)", e)

    def _publish_held_status(self) -> None:
        status, self._held_status = self._held_status, None
        if status is not None:
            self.publish_status(status)

    def changed(self) -> None:
        """Something on the screen changed: redraw."""
        self._changed.set()

    # -- buttons and chat -----------------------------------------------------------------
    def handle_button(self, event: ButtonEvent) -> None:
        log.debug("button %s %s -> %s", event.button, "held" if event.long else "pressed", event.action)
        if self.app.notice != RECOVERING_NOTICE:  # a repair or a failed send was seen: clear it
            self.app.notice = None
        effect = self.app.handle(event.action)
        if isinstance(effect, Send):
            self.append_chat(effect.text)
        self._changed.set()
        self._save_seen()

    def append_chat(self, text: str) -> int | None:
        """Append a chat message to the own feed; returns its block index, None if the message
        is held (the own feed is being recovered) or could not be appended (said in the log)."""
        text = sanitize(text)
        if self._recovering:
            if len(self._held) < MAX_HELD_MESSAGES:
                self._held.append(text)
                log.info("held until the own feed is recovered: %s", text)
            else:
                log.warning(
                    "not sent (over %d messages held while the own feed is recovered): %s", MAX_HELD_MESSAGES, text
                )
            return None
        try:
            index = self.own.append([chat_block(text, self.name, self._clock())]) - 1
        except DiskFull:
            log.error("not sent, the disk is full: %s", text)
            self.app.notice = "disk full"
            return None
        except HypercoreError as e:
            log.error("not sent (%s): %s", e, text)
            self.app.notice = "store error"
            return None
        log.info("sent #%d: %s", index, text)
        return index

    # -- the screen -----------------------------------------------------------------------
    def render(self) -> Image.Image | None:
        """The current frame (None without a screen); ages and timeouts advance first."""
        self.app.tick()
        return None if self.display is None else self.app.frame(self.display.screen)

    def redraw(self) -> bool:
        """Render and show the current frame; True if the screen changed."""
        frame = self.render()
        return frame is not None and self.display is not None and self.display.show(frame)

    async def _redraw_off_loop(self) -> None:
        # Rendering reads the service's state, so it stays on the loop; sending a frame (a 150 KB
        # SPI write, or an I2C one) waits on the bus, so it runs in a thread while replication,
        # buttons and the watchdog go on. A cancelled run still lets the frame finish: the panel's
        # pins are closed after it, never in the middle of a transfer.
        frame = self.render()
        if frame is None or self.display is None:
            return
        send = asyncio.ensure_future(asyncio.to_thread(self.display.show, frame))
        try:
            await asyncio.shield(send)
        except asyncio.CancelledError:
            await send
            raise

    async def run(self, stop: asyncio.Event) -> None:
        """Redraw on change (rate-limited by the display) and as ages tick, until `stop`."""
        while not stop.is_set():
            if self.display is not None and (wait := self.display.wait_time()) > 0:
                await asyncio.sleep(wait)
            self._changed.clear()
            try:
                await self._redraw_off_loop()
            except Exception as e:  # a frame that cannot be drawn must not end the redraw loop
                if self._draw_error != str(e):
                    log.error("screen: cannot draw a frame: %s", e)
                self._draw_error = str(e)
            else:
                self._draw_error = None
            waiters = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(stop.wait())]
            _, pending = await asyncio.wait(
                waiters, timeout=self.app.next_change_in(), return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()

    # -- unread marks across restarts ------------------------------------------------------
    def _load_seen(self) -> dict[bytes, int]:
        if self.state_dir is None:
            return {}
        try:
            data = json.loads((self.state_dir / SEEN_FILE).read_text())
            return {bytes.fromhex(k): int(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError):
            return {}  # missing or damaged: everything not seen counts as unread, nothing is lost

    def _save_seen(self) -> None:
        if self.state_dir is None:
            return
        data = {k.hex(): v for k, v in self.timeline.seen_lengths().items()}
        path = self.state_dir / SEEN_FILE
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot save %s: %s", path, e)
