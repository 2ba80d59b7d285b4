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
"""

from __future__ import annotations

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
