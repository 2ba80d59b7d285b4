"""The owner's control feed: signed instructions the device applies in order.

The owner's host appends JSON entries to a Hypercore only the owner can write, and the device
follows that core like any feed, so an entry not signed by the owner cannot exist. Entries:

    {"type": "follow",   "key": KEY, "name": "Ana"}
    {"type": "unfollow", "key": KEY}
    {"type": "rename",   "key": KEY, "name": "Ana B."}   (a followed feed's display name)
    {"type": "rename",   "name": "kitchen"}              (no key: the device's own name)
    {"type": "presets",  "presets": ["Hello!", "On my way"]}

KEY is z-base-32, hex or a `HYPERPI:` payload. An optional `"device": KEY` (the device's feed
key) limits an entry to one device when an owner has several. Malformed entries, and those over
the size or nesting limits (`hyperpi.blockjson`), raise ValueError; the service logs and skips
them, so one bad entry never blocks the ones after it.

`ControlState` is what a device's entries amount to (who it follows, under which names, its
own name and presets). The device applies its changes as they arrive
(`hyperpi.device.service`); the owner's host replays the same state to show what a device will
do (`hyperpi_host.pair`), so both read the entries by the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hyperpi import blockjson
from hyperpi.hypercore.keys import parse_key

from .config import MAX_NAME_CHARS, MAX_PRESET_CHARS, MAX_PRESETS

MAX_ENTRY_BYTES = 8192  # 32 presets of 140 chars in UTF-8 fit; anything bigger is not an entry
KINDS = ("follow", "unfollow", "rename", "presets")


@dataclass(frozen=True)
class ControlEntry:
    kind: str
    key: bytes | None = None
    name: str | None = None
    presets: tuple[str, ...] = ()
    device: bytes | None = None  # None: meant for every device of the owner


def parse_entry(block: bytes) -> ControlEntry:
    """One control-feed block; ValueError saying what is wrong with it."""
    try:
        value = blockjson.decode(block, MAX_ENTRY_BYTES)
    except blockjson.BadBlock as error:
        raise ValueError(f"entry refused: {error}") from None
    except ValueError:  # also UnicodeDecodeError
        raise ValueError("entry is not JSON") from None
    if not isinstance(value, dict) or value.get("type") not in KINDS:
        raise ValueError(f"entry type must be one of {', '.join(KINDS)}")
    kind = value["type"]
    device = _key(value, "device") if "device" in value else None
    if kind == "presets":
        presets = value.get("presets")
        if (
            not isinstance(presets, list)
            or not 1 <= len(presets) <= MAX_PRESETS
            or not all(isinstance(p, str) and p.strip() and len(p) <= MAX_PRESET_CHARS for p in presets)
        ):
            raise ValueError(f"presets must be 1 to {MAX_PRESETS} strings of 1 to {MAX_PRESET_CHARS} characters")
        return ControlEntry(kind, presets=tuple(p.strip() for p in presets), device=device)
    key = _key(value, "key") if kind != "rename" or "key" in value else None
    if kind == "unfollow":
        return ControlEntry(kind, key=key, device=device)
    name = value.get("name")  # follow and rename need one
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"name must be printable text of 1 to {MAX_NAME_CHARS} characters")
    return ControlEntry(kind, key=key, name=name.strip(), device=device)


def _key(value: dict, field: str) -> bytes:
    text = value.get(field)
    if not isinstance(text, str):
        raise ValueError(f"{field} must be a key string")
    return parse_key(text)


# --- what the entries amount to -----------------------------------------------------------------


@dataclass(frozen=True)
class Follow:
    """Follow `key`, showing its messages as `name`."""

    key: bytes
    name: str
    index: int  # the entry that set the name last; -1: the device's settings


@dataclass(frozen=True)
class Unfollow:
    key: bytes


@dataclass(frozen=True)
class Rename:
    """The device's own name."""

    name: str


@dataclass(frozen=True)
class SetPresets:
    presets: tuple[str, ...]


Change = Follow | Unfollow | Rename | SetPresets


class ControlState:
    """One device's follows, name and presets after its control-feed entries, applied in order.

    Sans-IO: entries go in, the change each one makes comes out. `name` and `presets` stay None
    until an entry sets them (the device's settings hold until then)."""

    def __init__(self, device_key: bytes, follows: Iterable[tuple[bytes, str]] = ()) -> None:
        self.device_key = device_key
        self.follows: dict[bytes, Follow] = {key: Follow(key, name, -1) for key, name in follows if key != device_key}
        self.name: str | None = None
        self.presets: tuple[str, ...] | None = None

    def meant_for(self, entry: ControlEntry) -> bool:
        """Whether the entry is for this device (its own or an owner-wide one)."""
        return entry.device is None or entry.device == self.device_key

    def apply(self, index: int, entry: ControlEntry) -> Change | None:
        """Apply entry #index; the change it makes on this device, None if it makes none."""
        if not self.meant_for(entry):
            return None
        if entry.kind == "presets":
            self.presets = entry.presets
            return SetPresets(entry.presets)
        if entry.kind == "rename" and entry.name is not None and entry.key in (None, self.device_key):
            self.name = entry.name
            return Rename(entry.name)
        if entry.key is None or entry.key == self.device_key:
            return None  # a device does not follow itself
        if entry.kind == "unfollow":
            self.follows.pop(entry.key, None)
            return Unfollow(entry.key)  # also drops a follow made outside the control feed
        if entry.name is None or (entry.kind == "rename" and entry.key not in self.follows):
            return None  # a rename of a feed not followed
        follow = Follow(entry.key, entry.name, index)
        self.follows[entry.key] = follow
        return follow
