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

from hyperpi.hypercore import Core, CoreEvent, Store

from .app import DeviceApp, Send
from .buttons import ButtonEvent
from .config import DeviceConfig
from .control import ControlEntry, parse_entry
from .display import Display
from .timeline import Presets, Timeline, sanitize

log = logging.getLogger("hyperpi.device")

SEEN_FILE = "seen.json"  # how far each feed was seen on screen: unread marks survive restarts


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
        self._control_applied = 0
        self._unsubscribe: dict[bytes, Callable[[], None]] = {}
        self._changed = asyncio.Event()
        self._draw_error: str | None = None  # the last drawing error, logged once while it repeats
        self._watch(own)
        for follow in config.follows:
            self.follow(follow.key, follow.name)
        if config.owner is not None:
            self.control = Core.open(store, config.owner)
            self._watch(self.control)
            self._apply_control()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """First start: announce the device on its own feed (the image's boot test reads it)."""
        if self.own.length == 0:
            self.append_chat(f"{self.name} is online")

    def close(self) -> None:
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()
        self._save_seen()

    # -- the network seam ------------------------------------------------------------------
    def cores(self) -> list[Core]:
        """Every core this device replicates: its own, the control feed, the followed feeds."""
        return [self.own, *([self.control] if self.control else []), *self.feeds.values()]

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
            self.feeds[key] = Core.open(self.store, key)
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

    def _watch(self, core: Core) -> None:
        self._unsubscribe[core.key] = core.subscribe(
            lambda event, key=core.key: self._on_core_event(key, event)
        )
        self._read(core.key)

    def _on_core_event(self, key: bytes, event: CoreEvent) -> None:
        self._read(key)

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
            if entry.device is not None and entry.device != self.own.key:
                continue
            self._apply(entry)

    def _apply(self, entry: ControlEntry) -> None:
        log.info("control feed: %s %s", entry.kind, entry.name or "")
        if entry.kind == "follow" and entry.key is not None and entry.name is not None:
            self.follow(entry.key, entry.name)
        elif entry.kind == "unfollow" and entry.key is not None:
            self.unfollow(entry.key)
        elif entry.kind == "rename" and entry.name is not None:
            if entry.key is None or entry.key == self.own.key:
                self.name = self.app.name = entry.name
            elif entry.key in self.feeds:
                self.timeline.names[entry.key] = entry.name
        elif entry.kind == "presets":
            self.presets.replace(entry.presets)
        self._changed.set()

    # -- buttons and chat -----------------------------------------------------------------
    def handle_button(self, event: ButtonEvent) -> None:
        log.debug("button %s %s -> %s", event.button, "held" if event.long else "pressed", event.action)
        effect = self.app.handle(event.action)
        if isinstance(effect, Send):
            self.append_chat(effect.text)
        self._changed.set()
        self._save_seen()

    def append_chat(self, text: str) -> int:
        """Append a chat message to the own feed; returns its block index."""
        text = sanitize(text)
        index = self.own.append([chat_block(text, self.name, self._clock())]) - 1
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
