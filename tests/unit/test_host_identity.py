"""One identity model: people (`hyperpi keys`) and devices (`hyperpi provision`) each have a
name, and every command that takes a key takes either name or the key, and says which it took."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hyperpi.hypercore import generate_keypair, z32_encode
from hyperpi.hypercore.keys import qr_payload
from hyperpi_host import devices, keys, pair, pairing, provisioning, resolve
from tests.conftest import run_cli as run

# The small real SD card image of the provisioning tests (sfdisk, mkfs.vfat, mke2fs -d).
from tests.image.test_provision import base_image  # noqa: F401 - a fixture

HYPERPI = [sys.executable, "-m", "hyperpi_host.cli"]


def make_device(name: str, owner: str | None, follows: list[tuple[str, bytes]] = ()) -> provisioning.Identity:
    """Record a device as `hyperpi provision` does (no image needed)."""
    control = keys.load_identity(owner).control_feed_key if owner else None
    identity = provisioning.Identity(feed=generate_keypair(), noise=generate_keypair())
    settings = provisioning.Settings(name=name, board="oled-bonnet", owner=control, follows=list(follows))
    provisioning.record_device(settings, identity, Path(f"/nonexistent/{name}.img"))
    return identity


@pytest.fixture
def household(hyperpi_home: Path) -> dict[str, provisioning.Identity]:
    """Owner `ana`, person `bea`, devices `kitchen` and `hall` owned by ana."""
    keys.create_identity("ana", owner=True)
    keys.create_identity("bea")
    return {"kitchen": make_device("kitchen", "ana"), "hall": make_device("hall", "ana")}


def test_every_form_resolves_and_says_what_it_is(household: dict, capsys: pytest.CaptureFixture) -> None:
    kitchen = household["kitchen"].feed_key
    bea = keys.load_identity("bea").feed_key
    assert resolve.feed("kitchen") == resolve.Resolved(kitchen, "device", "kitchen")
    assert resolve.feed("bea") == resolve.Resolved(bea, "person", "bea")
    for text in (z32_encode(kitchen), kitchen.hex(), qr_payload(kitchen)):
        assert resolve.feed(text) == resolve.Resolved(kitchen, "device", "kitchen"), text
    stranger = generate_keypair().public_key
    assert resolve.feed(z32_encode(stranger)) == resolve.Resolved(stranger, None, None)
    code, out, err = run(capsys, "qr", "kitchen", "--style", "dark")
    assert code == 0 and z32_encode(kitchen) in out
    assert err == f"KEY: device kitchen, feed key {z32_encode(kitchen)}\n"
    code, out, err = run(capsys, "qr", z32_encode(stranger), "--style", "dark")
    assert code == 0 and "(of no person or device known here)" in err


def test_people_and_devices_share_one_set_of_names(household: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "keys", "new", "kitchen")
    assert code == 2 and "is a device provisioned from here" in err and err.count("\n") == 1
    assert not keys.is_stored("kitchen")
    # A clash made before this rule (or by hand) is refused where the name is used, not guessed.
    make_device("bea", "ana")
    code, out, err = run(capsys, "qr", "bea")
    assert code == 2 and "is both a person" in err and err.count("\n") == 1


def test_devices_lists_and_shows_provisioned_devices(
    household: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run(capsys, "devices", "--no-mdns")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "BOARD", "FEED", "KEY", "ON", "THE", "LAN"]
    never = "never seen (browse without --no-mdns)"
    assert lines[1].split(maxsplit=3) == ["hall", "oled-bonnet", z32_encode(household["hall"].feed_key), never]
    assert lines[2].split(maxsplit=3) == ["kitchen", "oled-bonnet", z32_encode(household["kitchen"].feed_key), never]
    png = tmp_path / "kitchen.png"
    code, out, err = run(capsys, "devices", "kitchen", "--png", str(png), "--qr")
    assert code == 0, err
    assert f"feed key:       {z32_encode(household['kitchen'].feed_key)}" in out
    from hyperpi_host import qr

    assert qr.read_keys(png) == [household["kitchen"].feed_key]
    code, out, err = run(capsys, "devices", "garage")
    assert code == 2 and "no device named 'garage'" in err and "known: hall, kitchen" in err


def test_devices_remembers_where_each_device_was_last_seen(household: dict, capsys: pytest.CaptureFixture) -> None:
    from hyperpi.hypercore import discovery_key
    from hyperpi.net.discovery import Peer
    from hyperpi_host import devices

    kitchen = household["kitchen"].feed_key
    # What an mDNS browse returns for the kitchen (its feed's discovery key among its topics).
    seen = Peer("kitchen-1a2b3c4d", ("192.0.2.7",), 49737, frozenset({discovery_key(kitchen)}))
    devices._print_devices(devices.list_devices(), [seen], lan=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("  not seen yet") and lines[1].startswith("hall ")
    assert lines[2].endswith("  now at 192.0.2.7:49737") and lines[2].startswith("kitchen ")
    code, out, err = run(capsys, "devices", "--no-mdns")  # later, without browsing
    assert code == 0, err
    assert re.search(r"^kitchen .* last seen \d{4}-\d\d-\d\d \d\d:\d\d at 192\.0\.2\.7:49737$", out, re.MULTILINE), out
    devices._print_devices(devices.list_devices(), [], lan=True)  # browsed again: gone from the LAN
    assert re.search(
        r"^kitchen .* not seen now; last seen .* at 192\.0\.2\.7:49737$", capsys.readouterr().out, re.MULTILINE
    )


def test_devices_without_records_says_so(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "devices", "--no-mdns")
    assert code == 0 and "no devices provisioned from this computer yet" in out
    assert not hyperpi_home.exists(), "listing creates no state folder"


def test_pair_devices_with_each_other_by_name(household: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "pair", "add", "kitchen", "hall", "--timeout", "0")
    assert code == pair.EXIT_NOT_DELIVERED, err
    hall = household["hall"].feed_key
    assert err.startswith(f"KEY: device hall, feed key {z32_encode(hall)}\n")
    assert f"kitchen will follow hall ({z32_encode(hall)})" in out
    code, out, err = run(capsys, "pair", "add", "kitchen", "bea", "--timeout", "0")
    assert "kitchen will follow bea" in out
    # The same feed under another name is noticed: a rename, not a second follow.
    code, out, err = run(capsys, "pair", "add", "kitchen", z32_encode(hall), "--name", "Hallway", "--timeout", "0")
    assert "already follows this feed as hall; it will show it as Hallway" in out
    code, out, err = run(capsys, "pair", "list", "kitchen")
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert rows == [
        ["bea", z32_encode(keys.load_identity("bea").feed_key), "pending"],
        ["Hallway", z32_encode(hall), "pending"],
    ]
    # A bare key has no name to show: --name is asked for.
    code, out, err = run(capsys, "pair", "add", "kitchen", z32_encode(generate_keypair().public_key), "--timeout", "0")
    assert code == 2 and "give --name NAME" in err and err.count("\n") == 1


def test_pair_list_shows_follows_given_at_provisioning(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    keys.create_identity("ana", owner=True)
    keys.create_identity("bea")
    bea = keys.load_identity("bea").feed_key
    make_device("kitchen", "ana", follows=[("Bea", bea)])
    code, out, err = run(capsys, "pair", "list", "kitchen")
    assert out.splitlines()[1].split() == ["Bea", z32_encode(bea), "yes", "(provisioned)"]
    code, out, err = run(capsys, "pair", "add", "kitchen", "bea", "--name", "Bea", "--timeout", "0")
    assert code == 0 and "kitchen already follows Bea" in out


def provision_cli(capsys: pytest.CaptureFixture, image: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "provision", str(image), "-o", str(out), *extra)


def test_provision_names_resolve_and_image_is_private_with_a_bmap(
    base_image: Path,  # noqa: F811 (the fixture imported above)
    hyperpi_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    keys.create_identity("ana", owner=True)
    keys.create_identity("bea")
    os.umask(0o022)
    out = tmp_path / "kitchen.img"
    code, stdout, err = provision_cli(
        capsys, base_image, out, "--device", "kitchen", "--owner", "ana", "--follow", "bea"
    )
    assert code == 0, err
    assert "--owner: owner ana, control feed" in err and "--follow bea: person bea" in err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    bmap_file = tmp_path / "kitchen.img.bmap"
    assert stat.S_IMODE(bmap_file.stat().st_mode) == 0o600
    from hyperpi_host import bmap

    mapped = bmap.read_bmap(bmap_file)
    assert mapped.image_size == out.stat().st_size
    assert not list(tmp_path.glob("*.partial"))
    device = devices.load_device("kitchen")
    assert device.follows == (("bea", keys.load_identity("bea").feed_key),)
    # A name that is a person's is not a device name.
    code, stdout, err = provision_cli(capsys, base_image, tmp_path / "b.img", "--device", "bea")
    assert code == 2 and "is a person's key" in err and not (tmp_path / "b.img").exists()


def test_reprovisioning_a_device_refuses_then_moves_its_followers(
    base_image: Path,  # noqa: F811 (the fixture imported above)
    hyperpi_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    keys.create_identity("ana", owner=True)
    first = tmp_path / "kitchen.img"
    assert provision_cli(capsys, base_image, first, "--device", "kitchen", "--owner", "ana")[0] == 0
    old = devices.load_device("kitchen").feed_key
    assert (
        provision_cli(
            capsys, base_image, tmp_path / "hall.img", "--device", "hall", "--owner", "ana", "--follow", "kitchen"
        )[0]
        == 0
    )
    second = tmp_path / "kitchen2.img"
    code, out, err = provision_cli(capsys, base_image, second, "--device", "kitchen", "--owner", "ana")
    assert code == 2 and err.count("\n") == 1
    assert "the old card keeps its old identity" in err and "--force" in err
    assert not second.exists() and devices.load_device("kitchen").feed_key == old
    code, out, err = provision_cli(capsys, base_image, second, "--device", "kitchen", "--owner", "ana", "--force")
    assert code == 0, err
    new = devices.load_device("kitchen").feed_key
    assert new != old
    assert "moved:     hall will follow the new kitchen" in out
    with keys.open_store() as store:
        control = keys.open_control_feed(store, "ana")
        in_effect = pairing.follows(control, devices.load_device("hall"))
    assert set(in_effect) == {new} and in_effect[new].name == "kitchen"


def test_chat_write_as_a_person_appends_to_that_persons_feed(hyperpi_home: Path, tmp_path: Path) -> None:
    keys.create_identity("ana", owner=True)
    keys.create_identity("bea")
    env = {**os.environ, "HYPERPI_HOME": str(hyperpi_home), "PYTHONUNBUFFERED": "1"}
    writer = subprocess.Popen(
        [*HYPERPI, "chat", "write", "--as", "bea", "--no-mdns", "--listen", "127.0.0.1:0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stderr is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == z32_encode(keys.load_identity("bea").feed_key)
        assert writer.stderr.readline() == "writing as bea\n"
        port = writer.stderr.readline().strip().rpartition(":")[2]
        writer.stdin.write("hello from bea\n")
        writer.stdin.flush()
        # A viewer names bea too: the same feed a device made with `--follow bea` follows.
        viewer = subprocess.run(
            [*HYPERPI, "chat", "view", "bea", "--store", str(tmp_path / "viewer"), "--no-mdns",
             "--listen", "127.0.0.1:0", "--peer", f"127.0.0.1:{port}", "--exit-after", "1"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert viewer.returncode == 0, viewer.stderr
        assert viewer.stdout == "<bea> hello from bea\n"
        assert viewer.stderr.startswith("KEY: person bea, feed key ")
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(60)


@pytest.mark.parametrize(
    ("people", "message"),
    [((), "no person to write as"), (("bea", "cem"), "give --as NAME, one of: bea, cem")],
)
def test_chat_write_without_a_default_person_says_whom(
    hyperpi_home: Path, capsys: pytest.CaptureFixture, people: tuple[str, ...], message: str
) -> None:
    for name in people:
        keys.create_identity(name)
    code, out, err = run(capsys, "chat", "write", "--no-mdns")
    assert code == 2 and message in err and err.count("\n") == 1
    code, out, err = run(capsys, "chat", "write", "--as", "bea", "--store", str(hyperpi_home / "x"))
    assert code == 2 and "leave out --store" in err


@pytest.mark.parametrize("compress", [None, "gzip", "zstd"])
def test_provision_errors_name_the_users_file(
    hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, compress: str | None
) -> None:
    import gzip

    import zstandard

    blank = bytes(1 << 20)  # no partition table: not a hyperpi image
    packed = {None: blank, "gzip": gzip.compress(blank), "zstd": zstandard.compress(blank)}[compress]
    image = tmp_path / f"blank.img{'.' + compress if compress else ''}"
    image.write_bytes(packed)
    code, out, err = provision_cli(capsys, image, tmp_path / "out.img", "--device", "kitchen")
    assert code == 2 and err.count("\n") == 1
    assert str(image) in err and ".partial" not in err, err
    assert not list(tmp_path.glob("out.img*"))


def test_chat_view_prints_what_it_holds_before_the_network(
    hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hyperpi.hypercore import Core, Store
    from hyperpi_host import netrun

    with Store(tmp_path / "viewer") as store:
        core = Core.create(store)
        core.append([b'{"type":"chat","text":"one","nick":"ana"}', b'{"type":"chat","text":"two","nick":"ana"}'])
        key = z32_encode(core.key)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("joined the network for messages it already held")

    monkeypatch.setattr(netrun, "start_swarm", no_network)
    code, out, err = run(capsys, "chat", "view", key, "--store", str(tmp_path / "viewer"), "--exit-after", "2")
    assert code == 0 and out == "<ana> one\n<ana> two\n"


def provision_at_a_terminal(image: Path, out: Path, answer: str) -> subprocess.CompletedProcess[str]:
    """`hyperpi provision` with a terminal on stdin (a pty) that types `answer`."""
    import pty

    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode() + b"\n")
        return subprocess.run(
            [*HYPERPI, "provision", str(image), "-o", str(out), "--device", "kitchen", "--board", "headless"],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(controller)
        os.close(terminal)


def test_reprovisioning_at_a_terminal_asks_first(
    base_image: Path,  # noqa: F811 (the fixture imported above)
    hyperpi_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    assert provision_cli(capsys, base_image, tmp_path / "kitchen.img", "--device", "kitchen")[0] == 0
    old = devices.load_device("kitchen").feed_key
    refused = provision_at_a_terminal(base_image, tmp_path / "no.img", "no")
    assert refused.returncode == 1, refused.stderr
    assert "the old card keeps its old identity" in refused.stderr
    assert "Provision kitchen again? Type 'yes'" in refused.stderr
    assert "not confirmed, nothing was written" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "no.img").exists() and devices.load_device("kitchen").feed_key == old
    agreed = provision_at_a_terminal(base_image, tmp_path / "yes.img", "yes")
    assert agreed.returncode == 0, agreed.stderr
    assert (tmp_path / "yes.img").exists() and devices.load_device("kitchen").feed_key != old
