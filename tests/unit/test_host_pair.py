"""`hyperpi pair` without the network: the entries it writes, what the device makes of them,
`pair list`, pending delivery, and every refusal (one line, control feed unchanged)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from hyperpi.device.config import DeviceConfig
from hyperpi.device.config import Follow as ConfigFollow
from hyperpi.device.control import parse_entry
from hyperpi.device.service import DeviceService
from hyperpi.hypercore import Core, Store, generate_keypair, z32_encode
from hyperpi.hypercore.keys import qr_payload
from hyperpi.hypercore.types import BlockRequest, ProofRequest, UpgradeRequest
from hyperpi_host import keys, pair, pairing, provisioning
from tests.conftest import run_cli as run


def make_device(name: str, owner: str | None, tmp_path: Path) -> provisioning.Identity:
    """Record a device as `hyperpi provision --device NAME --owner OWNER` does (no image needed)."""
    control = keys.load_identity(owner).control_feed_key if owner else None
    identity = provisioning.Identity(feed=generate_keypair(), noise=generate_keypair())
    settings = provisioning.Settings(name=name, board="headless", owner=control)
    provisioning.record_device(settings, identity, tmp_path / f"{name}.img")
    return identity


def copy_signed(writer: Core, reader: Core) -> None:
    """Give `reader` the writer's blocks as replication does: signed proofs, verified."""
    reader.verify_and_apply(writer.proof(ProofRequest(fork=0, upgrade=UpgradeRequest(0, writer.length), manifest=True)))
    for i in range(writer.length):
        reader.verify_and_apply(writer.proof(ProofRequest(fork=0, block=BlockRequest(i, reader.missing_nodes(i)))))


def control_entries(owner: str) -> list[dict]:
    with keys.open_store() as store:
        core = keys.open_control_feed(store, owner)
        return [json.loads(core.get(i)) for i in range(core.length)]


@pytest.fixture
def owned(hyperpi_home: Path, tmp_path: Path) -> provisioning.Identity:
    """Owner `alice` with device `kitchen`; also a plain key `bob` to follow."""
    keys.create_identity("alice", owner=True)
    keys.create_identity("bob")
    return make_device("kitchen", "alice", tmp_path)


def test_offline_add_writes_a_follow_entry_and_keeps_it_pending(
    owned: provisioning.Identity, capsys: pytest.CaptureFixture
) -> None:
    ana = generate_keypair().public_key
    code, out, err = run(capsys, "pair", "add", "kitchen", z32_encode(ana), "--name", "Ana", "--timeout", "0")
    assert code == pair.EXIT_NOT_DELIVERED == 3
    assert "entry #0 of alice's control feed" in out
    assert "kept" in err and "hyperpi pair sync" in err and "Traceback" not in err
    (entry,) = control_entries("alice")
    # Exactly the device-side format, addressed to this device by its feed key.
    assert entry == {"type": "follow", "key": z32_encode(ana), "name": "Ana", "device": z32_encode(owned.feed_key)}
    parsed = parse_entry(json.dumps(entry).encode())
    assert (parsed.kind, parsed.key, parsed.name, parsed.device) == ("follow", ana, "Ana", owned.feed_key)

    code, out, err = run(capsys, "pair", "list", "kitchen")
    assert code == 0
    assert "Ana" in out and z32_encode(ana) in out and "pending" in out
    assert "1 entry not yet on kitchen" in err and "hyperpi pair sync kitchen" in err


def test_keys_accepted_in_every_form(owned: provisioning.Identity, capsys: pytest.CaptureFixture) -> None:
    ana = generate_keypair().public_key
    bob = keys.load_identity("bob").feed_key
    forms = [("A1", z32_encode(ana)), ("A2", ana.hex()), ("A3", qr_payload(ana)), ("Bob", "bob")]
    for name, text in forms:
        assert run(capsys, "pair", "add", "kitchen", text, "--name", name, "--timeout", "0")[0] == 3
    entries = control_entries("alice")
    assert [e["key"] for e in entries] == [z32_encode(ana)] * 3 + [z32_encode(bob)]
    # The last name given wins, as on the device.
    with keys.open_store() as store:
        device = pair.load_device("kitchen")
        follows = pairing.follows(keys.open_control_feed(store, "alice"), device)
    assert {k: f.name for k, f in follows.items()} == {ana: "A3", bob: "Bob"}


def test_the_device_applies_what_pair_writes(
    owned: provisioning.Identity, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A DeviceService reading the control feed ends with exactly the follows `pair list` shows,
    and ignores entries meant for another device of the same owner."""
    make_device("hall", "alice", tmp_path)
    ana, bob, cat = (generate_keypair().public_key for _ in range(3))
    for argv in [
        ("add", "kitchen", z32_encode(ana), "--name", "Ana"),
        ("add", "hall", z32_encode(bob), "--name", "Bob"),  # not for kitchen
        ("add", "kitchen", z32_encode(cat), "--name", "Cat"),
        ("rm", "kitchen", z32_encode(ana)),
        ("add", "kitchen", z32_encode(cat), "--name", "Cat B"),
    ]:
        assert run(capsys, "pair", *argv, "--timeout", "0")[0] == 3

    code, out, _ = run(capsys, "pair", "list", "kitchen")
    assert code == 0 and "Cat B" in out and "Ana" not in out and "Bob" not in out

    with keys.open_store() as store:
        control = keys.open_control_feed(store, "alice")
        device_store = Store(tmp_path / "device")
        # The device's copy of the control feed: the same signed blocks, verified by proofs.
        copy_signed(control, Core.open(device_store, control.key))
        own = Core.create(device_store, owned.feed)
        service = DeviceService(DeviceConfig(name="kitchen", board="headless", owner=control.key), device_store, own)
        try:
            assert set(service.feeds) == {cat}
            assert service.timeline.names[cat] == "Cat B"
        finally:
            service.close()
            device_store.close()


def test_duplicate_add_appends_nothing(owned: provisioning.Identity, capsys: pytest.CaptureFixture) -> None:
    ana = z32_encode(generate_keypair().public_key)
    run(capsys, "pair", "add", "kitchen", ana, "--name", "Ana", "--timeout", "0")
    code, out, _ = run(capsys, "pair", "add", "kitchen", ana, "--name", "Ana", "--timeout", "0")
    assert code == 3 and "already follows Ana" in out
    assert len(control_entries("alice")) == 1


def test_rm_of_a_feed_not_paired_still_sends_the_unfollow(
    owned: provisioning.Identity, capsys: pytest.CaptureFixture
) -> None:
    other = generate_keypair().public_key
    code, _, err = run(capsys, "pair", "rm", "kitchen", other.hex(), "--timeout", "0")
    assert code == 3 and "does not follow" in err
    assert control_entries("alice") == [
        {"type": "unfollow", "key": z32_encode(other), "device": z32_encode(owned.feed_key)}
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("add", "nowhere", "bob", "--name", "B"), "no device named 'nowhere'"),
        (("add", "kitchen", "nobody", "--name", "B"), "no person or device is named 'nobody'"),
        (("add", "kitchen", "bob", "--name", "x" * 33), "would not accept this"),
        (("add", "kitchen", "bob", "--name", "  "), "would not accept this"),
        (("add", "kitchen", "bob", "--name", "a\nb"), "would not accept this"),
        (("add", "kitchen", "bob", "--name", "B", "--owner", "bob"), "'bob' is not the owner of kitchen"),
        (("add", "kitchen", "bob", "--name", "B", "--timeout", "-1"), "--timeout must be between"),
        (("add", "kitchen", "bob", "--name", "B", "--peer", "nohost"), "not HOST:PORT"),
        (("rm", "kitchen", "zz"), "not a key either"),
        (("rm", "kitchen", "HYPERPI:0000"), "bad key"),
        (("list", "Bad_Name"), "bad device name"),
    ],
)
def test_refusals_are_one_line_and_change_nothing(
    owned: provisioning.Identity, capsys: pytest.CaptureFixture, argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "pair", *argv)
    assert code == 2, (out, err)
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert control_entries("alice") == []


def test_own_feed_refused(owned: provisioning.Identity, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "pair", "add", "kitchen", z32_encode(owned.feed_key), "--name", "Me")
    assert code == 2 and "kitchen's own feed" in err
    assert control_entries("alice") == []


def test_device_without_owner_or_foreign_owner(
    hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_device("lonely", None, tmp_path)
    code, _, err = run(capsys, "pair", "list", "lonely")
    assert code == 2 and "without --owner" in err
    keys.create_identity("carol", owner=True)
    make_device("away", "carol", tmp_path)
    (keys.keys_dir() / "carol.json").unlink()  # the owner key lives on another computer
    code, _, err = run(capsys, "pair", "add", "away", "aa" * 32, "--name", "A", "--timeout", "0")
    assert code == 2 and "not a key on this computer" in err and "hyperpi keys import" in err


def test_damaged_device_record(owned: provisioning.Identity, capsys: pytest.CaptureFixture, hyperpi_home: Path) -> None:
    (hyperpi_home / "devices" / "kitchen.json").write_text("{not json")
    code, _, err = run(capsys, "pair", "list", "kitchen")
    assert code == 2 and "damaged" in err and "provision the device again" in err


def test_list_empty_and_sync_with_nothing_pending(owned: provisioning.Identity, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "pair", "list", "kitchen")
    assert code == 0 and "follows no feeds" in out and err == ""
    code, out, _ = run(capsys, "pair", "sync", "kitchen", "--no-mdns")
    assert code == 0 and "already has every entry" in out


def test_held_length_is_per_control_feed(owned: provisioning.Identity, capsys: pytest.CaptureFixture) -> None:
    device = pair.load_device("kitchen")
    assert pairing.held_length(device) == 0
    pairing.record_held(device, 4)
    pairing.record_held(device, 2)  # never goes back: a slower peer's report says nothing new
    assert pairing.held_length(device) == 4
    moved = pair.Device(device.name, device.feed_key, device.noise_key, bytes(32))
    assert pairing.held_length(moved) == 0  # re-provisioned to another owner: start over


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_waiting_line_redraws_on_a_terminal_and_prints_changes_in_logs() -> None:
    device = pair.Device("kitchen", bytes(32), None, bytes(32))
    waiting = [pair.Delivery(device, None, needed=3)]  # type: ignore[arg-type]
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        line = pair._WaitLine(stream)
        line.show(pair._status(waiting), 30)
        line.show(pair._status(waiting), 29.4)
        waiting[0].connected = True
        line.show(pair._status(waiting), 28)
        line.end()
        waiting[0].connected = False
    assert terminal.getvalue() == (
        "\rwaiting for kitchen: looking for it on the LAN, 30 s left\x1b[K"
        "\rwaiting for kitchen: looking for it on the LAN, 29 s left\x1b[K"
        "\rwaiting for kitchen: connected, sending, 28 s left\x1b[K"
        "\r\x1b[K"
    )
    assert log.getvalue() == (
        "waiting for kitchen: looking for it on the LAN (up to 30 s)\n"
        "waiting for kitchen: connected, sending (up to 28 s)\n"
    )


def test_host_and_device_read_the_same_entries_alike(hyperpi_home: Path, tmp_path: Path) -> None:
    """Every kind of entry, including ones a device must ignore, written straight to the control
    feed: the follows the host replays (`pairing.follows`) are the feeds the device follows, under
    the same names, starting from the follows of its settings."""
    keys.create_identity("alice", owner=True)
    ana, bob, cat, dan = (generate_keypair().public_key for _ in range(4))
    identity = provisioning.Identity(feed=generate_keypair(), noise=generate_keypair())
    control_key = keys.load_identity("alice").control_feed_key
    settings = provisioning.Settings(
        name="kitchen", board="headless", owner=control_key, follows=[("Dan", dan), ("Bob", bob)]
    )
    provisioning.record_device(settings, identity, tmp_path / "kitchen.img")
    own = identity.feed_key
    other_device = generate_keypair().public_key

    def block(**fields: str | list[str]) -> bytes:
        return json.dumps(fields).encode()

    entries = [
        block(type="follow", key=z32_encode(ana), name="Ana"),
        block(type="rename", key=z32_encode(cat), name="Cat"),  # not followed: nothing
        b"not json",
        block(type="follow", key=z32_encode(own), name="Me"),  # the device itself: nothing
        block(type="unfollow", key=z32_encode(dan)),  # a follow from its settings
        block(type="follow", key=z32_encode(cat), name="Cat", device=z32_encode(other_device)),
        block(type="rename", key=z32_encode(bob), name="Bob B."),
        block(type="rename", name="hall"),
        block(type="rename", key=z32_encode(own), name="hall 2"),
        block(type="presets", presets=["Yes"]),
        block(type="follow", key=z32_encode(cat), name="Cat", device=z32_encode(own)),
        block(type="follow", key=z32_encode(ana), name="Ana A."),
    ]
    with keys.open_store() as store:
        control = keys.open_control_feed(store, "alice")
        control.append(entries)
        host_view = {key: f.name for key, f in pairing.follows(control, pair.load_device("kitchen")).items()}

        device_store = Store(tmp_path / "device")
        copy_signed(control, Core.open(device_store, control.key))
        config = DeviceConfig(
            name="kitchen",
            board="headless",
            owner=control.key,
            follows=tuple(ConfigFollow(name, key) for name, key in settings.follows),
        )
        service = DeviceService(config, device_store, Core.create(device_store, identity.feed))
        try:
            device_view = {key: service.timeline.names[key] for key in service.feeds}
            assert service.name == "hall 2" and service.presets.items == ["Yes"]
        finally:
            service.close()
            device_store.close()
    assert host_view == device_view == {ana: "Ana A.", bob: "Bob B.", cat: "Cat"}
