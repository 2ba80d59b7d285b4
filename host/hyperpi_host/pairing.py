"""The pairing engine under `hyperpi pair` (pair.py): the owner's control-feed entries for one
device, what they add up to on it, and how much of the feed each device is known to hold.

Entries are the `follow` / `unfollow` blocks `hyperpi.device.control` reads (`"device": its feed
key`); each is checked by the device's own parser before it is signed, and the follows in effect
are replayed with the device's reducer (ControlState), so host and device cannot disagree. How much
of its control feed each device was last seen holding is kept in `<home>/pairing.json`, so pending
entries show without touching the network. Errors are PairingError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from hyperpi.device.control import ControlEntry, ControlState, Follow, parse_entry
from hyperpi.hypercore import Core, HypercoreError, z32_encode

from . import home

if TYPE_CHECKING:  # the record type only: devices.py is a command module
    from .devices import Device

PAIRING_FILE = "pairing.json"  # per device feed key: how much of its control feed it holds


class PairingError(Exception):
    """An entry the device would refuse, or a control feed that cannot be written."""


# --- the control feed's entries ------------------------------------------------------------------


def follow_entry(device: Device, key: bytes, name: str) -> bytes:
    return _entry({"type": "follow", "key": z32_encode(key), "name": name, "device": z32_encode(device.feed_key)})


def unfollow_entry(device: Device, key: bytes) -> bytes:
    return _entry({"type": "unfollow", "key": z32_encode(key), "device": z32_encode(device.feed_key)})


def _entry(value: dict[str, str]) -> bytes:
    block = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        parse_entry(block)  # what the device would refuse is refused here, before it is signed
    except ValueError as error:
        raise PairingError(f"the device would not accept this: {error}") from None
    return block


def append(control: Core, block: bytes) -> int:
    """Append one entry to the control feed; its index."""
    try:
        return control.append([block]) - 1
    except HypercoreError as error:
        raise PairingError(f"cannot write the control feed: {error}") from None


def control_state(device: Device) -> ControlState:
    """The device's state before any control-feed entry: the follows its settings gave it."""
    return ControlState(device.feed_key, ((key, name) for name, key in device.follows))


def entries_for(control: Core, device: Device) -> Iterable[tuple[int, ControlEntry]]:
    """The control feed's entries the device applies (its own and the owner-wide ones), in order;
    malformed ones are skipped, as the device skips them."""
    state = control_state(device)
    for index in range(control.contiguous_length):
        try:
            entry = parse_entry(control.get(index))
        except ValueError:
            continue
        if state.meant_for(entry):
            yield index, entry


def follows(control: Core, device: Device) -> dict[bytes, Follow]:
    """The follows in effect on `device` once it has applied every entry (replayed by the rules
    the device applies them with), starting from those its settings gave it (index -1)."""
    state = control_state(device)
    for index, entry in entries_for(control, device):
        state.apply(index, entry)
    return state.follows


def needed_length(control: Core, device: Device) -> int:
    """How much of the control feed the device must hold to have every entry meant for it."""
    last = -1
    for index, _ in entries_for(control, device):
        last = index
    return last + 1


# --- what each device is known to hold (<home>/pairing.json) -------------------------------------


def _pairing_path() -> Path:
    return home.hyperpi_home() / PAIRING_FILE


def _load_pairing() -> dict[str, dict]:
    try:
        data = json.loads(_pairing_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: every entry counts as pending, the next sync corrects it


def held_length(device: Device) -> int:
    """The control feed length `device` was last seen holding (0 if never seen)."""
    record = _load_pairing().get(device.feed_key.hex())
    if not isinstance(record, dict) or device.control_key is None:
        return 0
    if record.get("control_feed") != device.control_key.hex():
        return 0  # a different owner since: what it held of the old feed says nothing
    length = record.get("length")
    return length if isinstance(length, int) and length >= 0 else 0


def record_held(device: Device, length: int) -> None:
    """Remember that `device` holds at least `length` blocks of its control feed."""
    assert device.control_key is not None
    if length <= held_length(device):
        return
    data = _load_pairing()
    data[device.feed_key.hex()] = {"name": device.name, "control_feed": device.control_key.hex(), "length": length}
    home.write_atomic(_pairing_path(), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o644)
