"""The chat timeline: merge order, untrusted text, flood cap, unread marks, delivery ticks."""

from __future__ import annotations

import json

from hyperpi.device.timeline import (
    HISTORY_PER_FEED,
    MAX_BLOCK_BYTES,
    MAX_TEXT_CHARS,
    Collapsed,
    Message,
    Presets,
    Timeline,
    decode_block,
    sanitize,
)

NOW = 1_700_000_000.0
OWN, ANA, BOB = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


class ListFeed:
    """Plain data standing in for a core: the timeline needs only key, length and get."""

    def __init__(self, key: bytes, blocks: list[bytes] | None = None) -> None:
        self.key = key
        self.blocks = list(blocks or [])

    @property
    def length(self) -> int:
        return len(self.blocks)

    def get(self, index: int) -> bytes:
        return self.blocks[index]


def chat(text: str, t: float, nick: str = "") -> bytes:
    return json.dumps({"type": "chat", "text": text, "time": int(t * 1000), "nick": nick}).encode()


def test_feeds_merge_in_time_order() -> None:
    tl = Timeline(OWN, clock=lambda: NOW)
    tl.update(ListFeed(ANA, [chat("a1", NOW - 50), chat("a2", NOW - 10)]))
    tl.update(ListFeed(BOB, [chat("b1", NOW - 30)]))
    tl.update(ListFeed(OWN, [chat("me", NOW - 20)]))
    assert [m.text for m in tl.messages()] == ["a1", "b1", "me", "a2"]


def test_future_times_are_clamped_and_feed_order_kept() -> None:
    tl = Timeline(OWN, clock=lambda: NOW)
    tl.update(ListFeed(ANA, [chat("far future", NOW + 10**6), chat("older claim", NOW - 100)]))
    tl.update(ListFeed(BOB, [chat("bob", NOW - 1)]))
    msgs = tl.messages()
    # A feed cannot stay pinned to the bottom by claiming a future time, and its own order holds.
    assert all(m.time_ms <= NOW * 1000 for m in msgs)
    ana = [m.text for m in msgs if m.feed == ANA]
    assert ana == ["far future", "older claim"]


def test_sanitize_strips_controls_and_caps_length() -> None:
    assert sanitize("hi\x1b[2J\x00 there\u202e!") == "hi[2J there!"
    assert sanitize("a\n\n\tb") == "a b"
    assert len(sanitize("x" * 10_000)) == MAX_TEXT_CHARS
    assert sanitize("x" * 10_000).endswith("…")


def test_combining_marks_capped() -> None:
    s = sanitize("a" + "\u0300" * 50)
    assert len(s) <= 3


def test_decode_block_shapes() -> None:
    assert decode_block(chat("hello", NOW, "ana")) == ("hello", int(NOW * 1000), "ana")
    text, t, nick = decode_block(json.dumps({"type": "other", "n": 1}).encode())
    assert text == '{"type": "other", "n": 1}' and t is None
    assert decode_block(b"plain words\x07")[0] == "plain words"
    assert decode_block(b"\xff\xfe\x00\x01")[0].startswith("[4 bytes: ff fe 00 01")
    assert decode_block(b"x" * (MAX_BLOCK_BYTES + 1))[0] == f"[{MAX_BLOCK_BYTES + 1} bytes]"
    # Bad field types are not trusted: no time, no nick.
    text, t, nick = decode_block(json.dumps({"text": "x", "time": "soon", "nick": 5}).encode())
    assert (text, t, nick) == ("x", None, "")


def test_flood_is_capped_and_collapsed() -> None:
    tl = Timeline(OWN, clock=lambda: NOW)
    tl.update(ListFeed(ANA, [chat("ana says hi", NOW - 100)]))
    flood = ListFeed(BOB, [chat(f"spam {i}", NOW - 50 + i * 0.001) for i in range(10_000)])
    tl.update(flood)
    assert len([m for m in tl.messages() if m.feed == BOB]) == HISTORY_PER_FEED
    view = tl.view()
    assert isinstance(view[1], Collapsed) and view[1].count == HISTORY_PER_FEED - 3
    assert [getattr(v, "text", None) for v in view[-3:]] == ["spam 9997", "spam 9998", "spam 9999"]
    # Ana's message stays within the last 5 lines of the view despite 10,000 from Bob.
    assert view[0].text == "ana says hi" and len(view) == 5
    # The unread count is every message not seen, not only those kept in memory.
    assert tl.unread_count == 10_001


def test_unread_marks_and_seen_lengths() -> None:
    tl = Timeline(OWN, clock=lambda: NOW, seen={ANA: 1})
    ana = ListFeed(ANA, [chat("old", NOW - 9), chat("new", NOW - 8)])
    tl.update(ana)
    tl.update(ListFeed(OWN, [chat("mine", NOW - 7)]))
    assert [m.unread for m in tl.messages()] == [False, True, False]
    assert tl.unread_count == 1
    assert tl.mark_read() is True
    assert tl.unread_count == 0 and tl.seen_lengths()[ANA] == 2
    ana.blocks.append(chat("newer", NOW - 1))
    assert [m.text for m in tl.update(ana)] == ["newer"]
    assert tl.unread_count == 1


def test_delivery_counts_from_peer_lengths() -> None:
    tl = Timeline(OWN, clock=lambda: NOW)
    tl.update(ListFeed(OWN, [chat("one", NOW - 2), chat("two", NOW - 1)]))
    one, two = tl.messages()
    assert tl.delivered(one) == 0
    assert tl.set_peer_lengths("peer-a", {OWN: 1}) is True
    assert (tl.delivered(one), tl.delivered(two)) == (1, 0)
    tl.set_peer_lengths("peer-b", {OWN: 2})
    assert (tl.delivered(one), tl.delivered(two)) == (2, 1)
    assert tl.set_peer_lengths("peer-b", {ANA: 5}) is False  # nothing about our feed changed


def test_forget_and_names() -> None:
    tl = Timeline(OWN, clock=lambda: NOW)
    tl.update(ListFeed(ANA, [chat("x", NOW)]))
    assert len(tl.name_of(ANA)) == 8  # short z-base-32 key when the follow list has no name
    tl.names[ANA] = "Ana"
    assert tl.name_of(ANA) == "Ana"
    tl.forget(ANA)
    assert tl.messages() == []


def test_reader_reads_only_held_blocks() -> None:
    class Sparse(ListFeed):
        contiguous_length = 1

    tl = Timeline(OWN, clock=lambda: NOW)
    feed = Sparse(ANA, [chat("a", NOW), chat("b", NOW)])
    assert [m.text for m in tl.update(feed)] == ["a"]
    feed.contiguous_length = 2
    assert [m.text for m in tl.update(feed)] == ["b"]


def test_presets_cycle_and_replace() -> None:
    p = Presets(["Hi", "Yes", "No"])
    assert [p.next(), p.next(), p.next(), p.prev()] == ["Yes", "No", "Hi", "No"]
    p.replace(["No", "Maybe"])
    assert p.current == "No"
    p.replace(["Other"])
    assert (p.current, p.index) == ("Other", 0)
    assert isinstance(Message(OWN, 0, 0, "", ""), Message)
