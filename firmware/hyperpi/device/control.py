"""The owner's control feed: signed instructions the device applies in order.

The owner's host appends JSON entries to a Hypercore only the owner can write, and the device
follows that core like any feed, so an entry not signed by the owner cannot exist. Entries:

    {"type": "follow",   "key": KEY, "name": "Ana"}
    {"type": "unfollow", "key": KEY}
    {"type": "rename",   "key": KEY, "name": "Ana B."}   (a followed feed's display name)
    {"type": "rename",   "name": "kitchen"}              (no key: the device's own name)
    {"type": "presets",  "presets": ["Hello!", "On my way"]}
    {"type": "release",  "version": "0.2.0", "key": KEY, "length": N, "size": S, "sha256": HEX,
                         "devices": [KEY, ...], "downgrade": false}   (devices, downgrade: optional)

A `release` names a release feed (device/bundle.py: a manifest block, then the bundle in
CHUNK_BYTES blocks) of N blocks holding S bytes (at most MAX_RELEASE_BYTES) whose sha256 is
HEX; `devices` limits it to those devices, `downgrade` allows installing an older version.

KEY is z-base-32, hex or a `HYPERPI:` payload. An optional `"device": KEY` (the device's feed
key) limits an entry to one device when an owner has several. Malformed entries, and those over
the size or nesting limits (`hyperpi.blockjson`), raise ValueError; the service logs and skips
them, so one bad entry never blocks the ones after it.

`ControlState` is what a device's entries amount to (who it follows, under which names, its
own name and presets). The device applies its changes as they arrive
(`hyperpi.device.service`); the owner's host replays the same state to show what a device will
do (`hyperpi_host.pairing`), so both read the entries by the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hyperpi import blockjson
from hyperpi.hypercore.keys import parse_key

from .bundle import MAX_RELEASE_BYTES, feed_length, is_sha256, parse_version
from .config import MAX_NAME_CHARS, MAX_PRESET_CHARS, MAX_PRESETS

MAX_ENTRY_BYTES = 8192  # 32 presets of 140 chars in UTF-8 fit; anything bigger is not an entry
KINDS = ("follow", "unfollow", "rename", "presets", "release")
MAX_RELEASE_DEVICES = 64  # keys in a release's `devices` list (~55 bytes each: within the entry limit)


@dataclass(frozen=True)
class Release:
    """A release the owner announced (see the module docstring)."""

    version: str
    key: bytes  # the release feed
    length: int
    size: int
    sha256: str
    devices: tuple[bytes, ...] | None = None  # None: every device of the owner
    downgrade: bool = False


@dataclass(frozen=True)
class ControlEntry:
    kind: str
    key: bytes | None = None
    name: str | None = None
    presets: tuple[str, ...] = ()
    device: bytes | None = None  # None: meant for every device of the owner
    release: Release | None = None


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
    if kind == "release":
        return ControlEntry(kind, key=_key(value, "key"), device=device, release=_release(value))
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


def _release(value: dict) -> Release:
    version = value.get("version")
    parse_version(version)
    size, length, digest = value.get("size"), value.get("length"), value.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_RELEASE_BYTES:
        raise ValueError(f"release size must be 1 to {MAX_RELEASE_BYTES} bytes")
    if not isinstance(length, int) or isinstance(length, bool) or length != feed_length(size):
        raise ValueError(f"release length must be {feed_length(size)} blocks for {size} bytes")
    if not is_sha256(digest):
        raise ValueError("release sha256 must be 64 lowercase hex digits")
    devices = None
    if "devices" in value:
        raw = value["devices"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_RELEASE_DEVICES:
            raise ValueError(f"release devices must be a list of 1 to {MAX_RELEASE_DEVICES} keys")
        devices = tuple(_key({"device": k}, "device") for k in raw)
    downgrade = value.get("downgrade", False)
    if not isinstance(downgrade, bool):
        raise ValueError("release downgrade must be true or false")
    return Release(str(version), _key(value, "key"), length, size, str(digest), devices, downgrade)


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


Change = Follow | Unfollow | Rename | SetPresets | Release


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
        if entry.device is not None and entry.device != self.device_key:
            return False
        devices = entry.release.devices if entry.release is not None else None
        return devices is None or self.device_key in devices

    def apply(self, index: int, entry: ControlEntry) -> Change | None:
        """Apply entry #index; the change it makes on this device, None if it makes none."""
        if not self.meant_for(entry):
            return None
        if entry.release is not None:
            return entry.release  # the device's updater decides whether it applies (device/update.py)
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
