"""The owner's control feed: entries applied in order, malformed ones skipped and logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hyperpi.device.config import DeviceConfig, Follow
from hyperpi.device.control import ControlState, Rename, SetPresets, Unfollow, parse_entry
from hyperpi.device.control import Follow as Followed
from hyperpi.device.service import DeviceService, chat_block
from hyperpi.hypercore import Core, Store, generate_keypair
from hyperpi.hypercore.keys import z32_encode
from hyperpi.hypercore.types import BlockRequest, ProofRequest, UpgradeRequest

NOW = 1_700_000_000.0


def entry(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_parse_entries() -> None:
    key = bytes(range(32))
    e = parse_entry(entry(type="follow", key=z32_encode(key), name=" Ana "))
    assert (e.kind, e.key, e.name, e.device) == ("follow", key, "Ana", None)
    assert parse_entry(entry(type="unfollow", key=key.hex())).key == key
    assert parse_entry(entry(type="rename", name="hall")).key is None
    assert parse_entry(entry(type="presets", presets=["a", "b"])).presets == ("a", "b")
    assert parse_entry(entry(type="follow", key=key.hex(), name="A", device=key.hex())).device == key
    for bad in [
        b"\xff",
        b"[]",
        entry(type="delete"),
        entry(type="follow", key="x", name="A"),
        entry(type="follow", key=key.hex()),
        entry(type="presets", presets=[]),
        entry(type="rename"),
        b"x" * 9000,
    ]:
        with pytest.raises(ValueError):
            parse_entry(bad)


def test_control_state_replays_entries_into_changes() -> None:
    """The one reducer the device and the owner's host both use (hyperpi/device/control.py)."""
    me, ana, bob, other = bytes([1] * 32), bytes([2] * 32), bytes([3] * 32), bytes([4] * 32)
    state = ControlState(me, [(bob, "Bob"), (me, "Me")])
    assert state.follows == {bob: Followed(bob, "Bob", -1)}  # never itself, even from settings
    steps = [
        (entry(type="follow", key=ana.hex(), name="Ana"), Followed(ana, "Ana", 0)),
        (entry(type="rename", key=ana.hex(), name="Ana B."), Followed(ana, "Ana B.", 1)),
        (entry(type="rename", key=other.hex(), name="X"), None),  # not followed
        (entry(type="follow", key=me.hex(), name="Me"), None),
        (entry(type="unfollow", key=me.hex()), None),
        (entry(type="follow", key=other.hex(), name="X", device=other.hex()), None),  # another device's
        (entry(type="unfollow", key=bob.hex(), device=me.hex()), Unfollow(bob)),
        (entry(type="rename", name="hall"), Rename("hall")),
        (entry(type="rename", key=me.hex(), name="hall 2"), Rename("hall 2")),
        (entry(type="presets", presets=["Yes", " No "]), SetPresets(("Yes", "No"))),
        (entry(type="unfollow", key=other.hex()), Unfollow(other)),  # may be followed outside the feed
    ]
    for index, (block, change) in enumerate(steps):
        assert state.apply(index, parse_entry(block)) == change, index
    assert state.follows == {ana: Followed(ana, "Ana B.", 1)}
    assert (state.name, state.presets) == ("hall 2", ("Yes", "No"))
    assert ControlState(me).name is None and ControlState(me).presets is None  # settings hold until set


def test_device_applies_control_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "store")
    own = Core.create(store)
    owner_pair = generate_keypair()
    control = Core.create(Store(tmp_path / "owner"), owner_pair)  # the owner's host
    ana_store = Store(tmp_path / "ana")
    ana = Core.create(ana_store)
    ana.append([chat_block("hello from ana", "ana", NOW - 5)])
    bob = Core.create(Store(tmp_path / "bob"))

    # The device's copy of the control feed: the owner's entries, verified block by block as
    # replication would bring them (proof from the writer, verify_and_apply on the reader).
    config = DeviceConfig(name="kitchen", board="headless", owner=control.key, follows=(Follow("Bob", bob.key),))
    service = DeviceService(config, store, own, clock=lambda: NOW)
    device_copy = store._cores[control.key]
    changes: list[int] = []
    service.on_cores_changed = lambda: changes.append(len(service.cores()))

    entries = [
        entry(type="follow", key=z32_encode(ana.key), name="Ana"),
        b"not json",
        entry(type="rename", key=ana.key.hex(), name="Ana B."),
        entry(type="presets", presets=["Yes", "No"]),
        entry(type="follow", key=bob.key.hex(), name="Bob", device=bytes(32).hex()),  # another device
        entry(type="unfollow", key=bob.key.hex()),
        entry(type="rename", name="hall"),
    ]
    control.append(entries)
    replicate(control, device_copy)
    replicate(ana, store._cores.get(ana.key) or Core.open(store, ana.key))

    assert set(service.feeds) == {ana.key}
    assert service.timeline.names[ana.key] == "Ana B."
    assert service.presets.items == ["Yes", "No"]
    assert service.name == "hall" and service.app.name == "hall"
    assert changes == [4, 3]  # own, control, Bob, Ana; then Bob unfollowed: the swarm hears of both
    assert "control feed entry 1 skipped: entry is not JSON" in caplog.text
    assert [m.text for m in service.timeline.messages()] == ["hello from ana"]
    assert caplog.records and any("message from Ana B.: hello from ana" in r.getMessage() for r in caplog.records)


def replicate(writer: Core, reader: Core) -> None:
    """Copy a writer's blocks to a reader the way the wire does: signed proofs, verified."""
    if reader.length < writer.length:
        upgrade = UpgradeRequest(reader.length, writer.length - reader.length)
        reader.verify_and_apply(writer.proof(ProofRequest(fork=0, upgrade=upgrade, manifest=reader.manifest is None)))
    for i in range(writer.length):
        if not reader.has(i):
            reader.verify_and_apply(writer.proof(ProofRequest(fork=0, block=BlockRequest(i, reader.missing_nodes(i)))))


logging.getLogger("hyperpi.device").setLevel(logging.INFO)
