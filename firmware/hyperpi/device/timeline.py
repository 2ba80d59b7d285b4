"""The chat timeline: messages of the device's own feed and every followed feed, merged in time order.

It reads blocks through a three-member protocol (`key`, `length`, `get(i)`), so it works on a real
`hyperpi.hypercore.Core` and on plain lists in tests. Everything read from other feeds is
untrusted: blocks are size- and depth-capped before parsing (`hyperpi.blockjson`; a block over
a limit shows as "[N bytes]" and is logged once per feed), text is stripped of control and format
characters and length-capped, claimed times cannot lie in the future, and a feed that floods is
kept to a short history and collapsed on screen so it cannot push the others away.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from hyperpi import blockjson
from hyperpi.hypercore.errors import HypercoreError
from hyperpi.hypercore.keys import z32_encode

log = logging.getLogger("hyperpi.device")

MAX_BLOCK_BYTES = 4096  # larger blocks are not chat: shown as "[N bytes]", never parsed
MAX_TEXT_CHARS = 280  # about 5 screens of the 128x64 OLED; longer text is cut with an ellipsis
MAX_NICK_CHARS = 24
MAX_COMBINING_RUN = 2  # combining marks kept per base character ("zalgo" text would fill lines)
HISTORY_PER_FEED = 64  # messages kept in memory per feed: bounds RAM however long a feed grows
MAX_RUN = 3  # consecutive messages from one feed shown before older ones collapse to one line


class FeedSource(Protocol):
    """What the timeline needs of a feed (a `hyperpi.hypercore.Core` is one)."""

    @property
    def key(self) -> bytes: ...

    @property
    def length(self) -> int: ...

    def get(self, index: int) -> bytes: ...


@dataclass
class Message:
    feed: bytes
    index: int
    time_ms: int  # when it was written, as claimed, but never later than when we first read it
    nick: str
    text: str
    unread: bool = False


@dataclass(frozen=True)
class Collapsed:
    """Stands for `count` older messages of one feed in a run (flood cap on screen)."""

    feed: bytes
    count: int
    time_ms: int


def sanitize(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Printable one-paragraph text: control/format characters gone, whitespace folded, capped."""
    out: list[str] = []
    marks = 0
    for ch in unicodedata.normalize("NFC", text):
        cat = unicodedata.category(ch)
        if ch in "\t\n\r\v\f" or cat == "Zs" or cat in ("Zl", "Zp"):
            ch = " "
        elif cat[0] == "C":  # Cc, Cf (incl. bidi overrides), Cs, Co, Cn
            continue
        if cat[0] == "M":
            marks += 1
            if marks > MAX_COMBINING_RUN:
                continue
        else:
            marks = 0
        if ch == " " and (not out or out[-1] == " "):
            continue
        out.append(ch)
    result = "".join(out).strip()
    if len(result) > limit:
        result = result[: limit - 1].rstrip() + "…"
    return result


STATUS_TYPE = "status"  # a device's report about itself (device/update.py): not a message


def is_status_block(data: bytes) -> bool:
    """A device's status block, which timelines and `hyperpi chat view` skip quietly."""
    if b'"status"' not in data:  # cheap test first: chat blocks never decode twice
        return False
    try:
        value = blockjson.decode(data)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("type") == STATUS_TYPE


def decode_block(data: bytes) -> tuple[str, int | None, str]:
    """(text, claimed time in ms or None, nick) of one block, whatever it holds."""
    try:
        return _decode(data)
    except blockjson.BadBlock:
        return f"[{len(data)} bytes]", None, ""


def _decode(data: bytes) -> tuple[str, int | None, str]:
    """As decode_block, but BadBlock for a block over the size or nesting limit."""
    try:
        value = blockjson.decode(data, MAX_BLOCK_BYTES)
    except UnicodeDecodeError:
        preview = data[:16].hex(" ")
        return f"[{len(data)} bytes: {preview}{' …' if len(data) > 16 else ''}]", None, ""
    except blockjson.BadBlock:
        raise
    except ValueError:  # not JSON: plain text from another tool
        return sanitize(data.decode("utf-8")), None, ""
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        # A chat block ({"type": "chat", "text", "time", "nick"}), or anything with a text field; extra fields ignored.
        claimed = value.get("time")
        claimed = claimed if isinstance(claimed, int) and not isinstance(claimed, bool) and claimed > 0 else None
        nick = value.get("nick")
        return (
            sanitize(value["text"]),
            claimed,
            sanitize(nick, MAX_NICK_CHARS) if isinstance(nick, str) else "",
        )
    # Other JSON: shown compactly, so feeds written by other tools still read sensibly.
    return sanitize(json.dumps(value, ensure_ascii=False, separators=(", ", ": "))), None, ""


class Timeline:
    """Merged, capped, sanitized view of several feeds, with unread marks and delivery counts."""

    def __init__(
        self,
        own_key: bytes,
        *,
        seen: dict[bytes, int] | None = None,
        clock: Callable[[], float] = time.time,
        history: int = HISTORY_PER_FEED,
    ) -> None:
        self.own_key = own_key
        self.names: dict[bytes, str] = {}
        self._clock = clock
        self._history = history
        self._messages: dict[bytes, deque[Message]] = {}
        self._read_to: dict[bytes, int] = {}  # next block index to read, per feed
        self._seen: dict[bytes, int] = dict(seen or {})  # blocks below this were seen on screen
        self._peer_lengths: dict[object, dict[bytes, int]] = {}
        self._refused: set[bytes] = set()  # feeds with a block over the limits, logged once

    # -- feeds ---------------------------------------------------------------------------
    def update(self, feed: FeedSource) -> list[Message]:
        """Read the blocks of `feed` not read yet (at most the last `history`); returns them."""
        # A reader core may know its length before the blocks arrive: read only what is held.
        key, length = feed.key, getattr(feed, "contiguous_length", feed.length)
        start = self._read_to.get(key, 0)
        if length <= start:
            return []
        start = max(start, length - self._history)
        now_ms = int(self._clock() * 1000)
        msgs = self._messages.setdefault(key, deque(maxlen=self._history))
        seen = self._seen.get(key, 0)
        new: list[Message] = []
        for index in range(start, length):
            try:
                block = feed.get(index)
            except (KeyError, HypercoreError):  # not held after all, or damaged (dropped, fetched again)
                length = index
                break
            if is_status_block(block):
                continue
            try:
                text, claimed, nick = _decode(block)
            except blockjson.BadBlock as error:
                text, claimed, nick = f"[{len(block)} bytes]", None, ""
                if key not in self._refused:  # once per feed: a hostile feed cannot flood the log
                    self._refused.add(key)
                    log.warning(
                        "feed %s: block %d not read (%s), shown as %s; others like it are not logged",
                        self.name_of(key), index, error, text,
                    )  # fmt: skip
            t = now_ms if claimed is None else min(claimed, now_ms)
            if msgs:  # a feed's own messages stay in the order it wrote them
                t = max(t, msgs[-1].time_ms)
            m = Message(key, index, t, nick, text, unread=key != self.own_key and index >= seen)
            msgs.append(m)
            new.append(m)
        self._read_to[key] = length
        return new

    def forget(self, key: bytes) -> None:
        """Stop showing a feed (unfollowed)."""
        self._messages.pop(key, None)
        self._read_to.pop(key, None)

    def feeds(self) -> list[bytes]:
        return list(self._messages)

    def name_of(self, key: bytes) -> str:
        return self.names.get(key) or z32_encode(key)[:8]

    # -- what the screen shows -------------------------------------------------------------
    def messages(self) -> list[Message]:
        """All messages in memory, oldest first."""
        merged = [m for msgs in self._messages.values() for m in msgs]
        merged.sort(key=lambda m: (m.time_ms, m.feed != self.own_key, m.feed, m.index))
        return merged

    def view(self, max_run: int = MAX_RUN) -> list[Message | Collapsed]:
        """Messages oldest first, each run of more than `max_run` from one feed collapsed."""
        out: list[Message | Collapsed] = []
        run: list[Message] = []

        def flush() -> None:
            if len(run) > max_run:
                hidden = run[: len(run) - max_run]
                out.append(Collapsed(run[0].feed, len(hidden), hidden[-1].time_ms))
                out.extend(run[len(run) - max_run :])
            else:
                out.extend(run)

        for m in self.messages():
            if run and run[-1].feed != m.feed:
                flush()
                run = []
            run.append(m)
        flush()
        return out

    @property
    def unread_count(self) -> int:
        # Counted from the read and seen positions, not the messages in memory: a feed with
        # more unread messages than HISTORY_PER_FEED must not show a count stuck at that cap.
        return sum(
            max(0, read_to - self._seen.get(key, 0)) for key, read_to in self._read_to.items() if key != self.own_key
        )

    def mark_read(self) -> bool:
        """Everything on hand counts as seen; True if anything changed."""
        changed = False
        for key, msgs in self._messages.items():
            for m in msgs:
                changed |= m.unread
                m.unread = False
            self._seen[key] = max(self._seen.get(key, 0), self._read_to.get(key, 0))
        return changed

    def seen_lengths(self) -> dict[bytes, int]:
        """How far each feed was seen, to persist across restarts."""
        return dict(self._seen)

    # -- delivery ticks ----------------------------------------------------------------------
    def set_peer_lengths(self, peer: object, lengths: dict[bytes, int]) -> bool:
        """What a peer holds (feed key -> its length); True if any delivery count changed.
        A peer that disconnects keeps its count: it still holds what it got."""
        old = self._peer_lengths.get(peer, {})
        merged = {**old, **lengths}
        self._peer_lengths[peer] = merged
        return merged.get(self.own_key, 0) != old.get(self.own_key, 0)

    def delivered(self, m: Message) -> int:
        """How many peers hold message `m` (the peer's length covers its index)."""
        return sum(1 for lengths in self._peer_lengths.values() if lengths.get(m.feed, 0) > m.index)


class Presets:
    """The canned messages and which one is selected (one button cycles, another sends)."""

    def __init__(self, items: Iterable[str]) -> None:
        self.items = [sanitize(i) for i in items if sanitize(i)] or ["Hello!"]
        self.index = 0

    @property
    def current(self) -> str:
        return self.items[self.index]

    def next(self) -> str:
        self.index = (self.index + 1) % len(self.items)
        return self.current

    def prev(self) -> str:
        self.index = (self.index - 1) % len(self.items)
        return self.current

    def replace(self, items: Iterable[str]) -> None:
        """New presets (owner's control feed); keep the selection if that text is still there."""
        current = self.current
        self.items = [sanitize(i) for i in items if sanitize(i)] or self.items
        self.index = self.items.index(current) if current in self.items else 0
