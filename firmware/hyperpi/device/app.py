"""The device's UI as a state machine: button actions and feed changes in, a frame out.

Modes: the splash at boot, the chat screen, the pairing screen. No I/O here: the service asks
`handle(action)` what a button does (a `Send` means "append this text to the own feed") and
`frame(screen)` for the picture, so the UI is tested without threads, pins or screens.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from .render import ChatFrame, Line, Screen, lines_shown, render_chat, render_pairing, render_splash
from .timeline import MAX_RUN, Collapsed, Presets, Timeline

SPLASH_SECONDS = 2.0  # long enough to read the name, short enough not to be in the way
SEND_FLASH_SECONDS = 1.0  # the preset bar shows "*" this long after a send
MAX_LINES_RENDERED = 48  # more than any screen shows; keeps a frame's work bounded


@dataclass(frozen=True)
class Send:
    """Append this text to the device's own feed."""

    text: str


def format_age(ms: int) -> str:
    """Relative age in at most 3-4 characters: now, 42s, 5m, 3h, 2d."""
    s = max(0, ms) // 1000
    if s < 10:
        return "now"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _messages_shown(screen: Screen, chat: ChatFrame) -> set[tuple[bytes, str, str]]:
    """The messages (not "+N more" lines) that `chat` puts on the screen."""
    count = lines_shown(screen, chat.lines)
    shown = chat.lines[len(chat.lines) - count :]
    return {(line.sender_key, line.age, line.text) for line in shown if not line.collapsed}


class DeviceApp:
    def __init__(
        self, name: str, timeline: Timeline, presets: Presets, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = name
        self.timeline = timeline
        self.presets = presets
        self._clock = clock
        self.mode = "splash"
        self._started = clock()
        self._sent_at = -math.inf
        self.scroll = 0  # messages up from the newest
        self.network_up = False
        self.peers = 0
        self.notice: str | None = None  # store trouble to show instead of the network status
        self.update_line: str | None = None  # an update under way ("update 0.3.0: 42%"), below notices

    # -- input ----------------------------------------------------------------------------
    def handle(self, action: str) -> Send | None:
        """Apply one button action; any press also marks what is on screen as read."""
        self.timeline.mark_read()
        if self.mode != "chat":  # any press leaves the splash or the pairing screen
            self.mode = "chat"
            return None
        if action == "next":
            self.presets.next()
        elif action == "prev":
            self.presets.prev()
        elif action == "up":
            # Two-button boards scroll only up: past the oldest message it wraps to the newest.
            n = len(self.timeline.view())
            self.scroll = self.scroll + 1 if self.scroll + 1 < n else 0
        elif action == "down":
            self.scroll = max(0, self.scroll - 1)
        elif action == "pair":
            self.mode = "pairing"
        elif action == "send":
            self.scroll = 0
            self._sent_at = self._clock()
            return Send(self.presets.current)
        return None

    def tick(self) -> bool:
        """Time passing: leave the splash when due; True if the mode changed."""
        if self.mode == "splash" and self._clock() - self._started >= SPLASH_SECONDS:
            self.mode = "chat"
            return True
        return False

    # -- output ---------------------------------------------------------------------------
    def status(self) -> str:
        if self.notice:
            return self.notice
        if self.update_line:
            return self.update_line
        if not self.network_up:
            return "no network"
        if self.peers == 0:
            return "no peers yet"
        return f"{self.peers} peer" + ("s" if self.peers != 1 else "")

    def chat_frame(self, max_run: int | None = MAX_RUN) -> ChatFrame:
        """What the chat screen shows, ending `scroll` messages up from the newest; runs of one
        feed longer than `max_run` collapsed to one line (None: nothing collapsed)."""
        now_ms = int(self._clock() * 1000)
        items = self.timeline.view(sys.maxsize if max_run is None else max_run)
        self.scroll = min(self.scroll, max(0, len(items) - 1))
        end = len(items) - self.scroll
        lines = []
        for item in items[max(0, end - MAX_LINES_RENDERED) : end]:
            own = item.feed == self.timeline.own_key
            if isinstance(item, Collapsed):
                sender = self.name if own else self.timeline.name_of(item.feed)
                lines.append(Line(sender, "", str(item.count), item.feed, collapsed=True))
                continue
            lines.append(
                Line(
                    sender=self.name if own else self.timeline.name_of(item.feed),
                    age=format_age(now_ms - item.time_ms),
                    text=item.text,
                    sender_key=item.feed,
                    unread=item.unread,
                    own=own,
                    delivered=self.timeline.delivered(item) if own else None,
                )
            )
        return ChatFrame(
            name=self.name,
            status=self.status(),
            unread=self.timeline.unread_count,
            lines=tuple(lines),
            preset=self.presets.current,
            preset_pos=f"{self.presets.index + 1}/{len(self.presets.items)}",
            scroll=self.scroll,
            sending=self._clock() - self._sent_at < SEND_FLASH_SECONDS,
        )

    def frame(self, screen: Screen) -> Image.Image:
        if self.mode == "splash":
            return render_splash(screen, self.name)
        if self.mode == "pairing":
            return render_pairing(screen, self.timeline.own_key, self.name)
        return render_chat(screen, self.fitted_chat_frame(screen))

    def fitted_chat_frame(self, screen: Screen) -> ChatFrame:
        """The chat frame with runs of one feed collapsed only as far as needed: the longest run
        shown whole that pushes no message off the screen that the fully collapsed view shows."""
        collapsed = self.chat_frame()
        keep = _messages_shown(screen, collapsed)
        best, low, high = collapsed, MAX_RUN + 1, len(self.timeline.messages())
        while low <= high:  # more shown of a run never brings an older message back: bisect
            run = (low + high) // 2
            candidate = self.chat_frame(max_run=run)
            if keep <= _messages_shown(screen, candidate):
                best, low = candidate, run + 1
            else:
                high = run - 1
        return best

    def next_change_in(self) -> float:
        """Seconds until the frame may change by itself: the splash ends, the send flash ends,
        or a shown age label ticks ("now" -> "10s" -> ... -> "1m" -> "2m"): at most a minute."""
        now = self._clock()
        if self.mode == "splash":
            return max(0.0, self._started + SPLASH_SECONDS - now)
        if now - self._sent_at < SEND_FLASH_SECONDS:
            return self._sent_at + SEND_FLASH_SECONDS - now
        wait = 60.0
        if self.mode == "chat":
            now_ms = now * 1000
            for item in self.timeline.view()[-MAX_LINES_RENDERED:]:
                age = max(0.0, now_ms - item.time_ms) / 1000
                if age < 10:
                    wait = min(wait, 10 - age)
                else:
                    unit = 1 if age < 60 else 60 if age < 3600 else 3600 if age < 86400 else 86400
                    wait = min(wait, unit - age % unit)
        return max(0.05, wait)
