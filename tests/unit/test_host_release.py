"""`hyperpi release publish --no-wait` and `release status --timeout 0`, offline: the release feed
holds the bundle as devices read it back, the control entry is what a device accepts, and
mistakes are one line."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from hyperpi.device.control import parse_entry
from hyperpi.device.install import assemble
from hyperpi.hypercore import Core, KeyPair, core_key, generate_keypair
from tests.conftest import run_cli


def fake_wheel(folder: Path, name: str, version: str, payload: bytes = b"", requires: tuple[str, ...] = ()) -> Path:
    """A minimal wheel: what `release` reads of one is its METADATA."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        wheel.writestr(f"{name}/data.bin", payload)
    path.write_bytes(buffer.getvalue())
    return path


def record_device(home: Path, name: str, control: bytes, feed: KeyPair | None = None) -> bytes:
    """The record `hyperpi provision` writes (hyperpi_host/provisioning.py), for a device made here."""
    feed = feed or generate_keypair()
    noise = generate_keypair()
    key = core_key(feed.public_key)
    (home / "devices").mkdir(mode=0o700, exist_ok=True)
    record = {"board": "headless", "feed_key_hex": key.hex(), "noise_public_key_hex": noise.public_key.hex()}
    record["owner_hex"] = control.hex()
    (home / "devices" / f"{name}.json").write_text(json.dumps(record))
    return key


@pytest.fixture
def owner(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> bytes:
    code, _, err = run_cli(capsys, "keys", "new", "--owner", "ana")
    assert code == 0, err
    from hyperpi_host import keys

    control = keys.load_identity("ana").control_feed_key
    assert control is not None
    return control


def test_publish_writes_the_bundle_and_a_release_entry(
    tmp_path: Path, hyperpi_home: Path, owner: bytes, capsys: pytest.CaptureFixture
) -> None:
    kitchen = record_device(hyperpi_home, "kitchen", owner)
    record_device(hyperpi_home, "hallway", owner)
    main = fake_wheel(tmp_path, "hyperpi", "0.2.0", bytes(range(256)) * 1000)
    extra = fake_wheel(tmp_path, "pad", "1.0")
    code, out, err = run_cli(
        capsys, "release", "publish", str(main), "--wheel", str(extra), "--device", "kitchen", "--no-wait"
    )
    assert code == 0, err
    assert "release 0.2.0" in out and "for kitchen" in out

    from hyperpi_host import keys

    with keys.open_store() as store:
        control = keys.open_control_feed(store, "ana")
        entry = parse_entry(control.get(control.length - 1))
        release = entry.release
        assert release is not None and release.version == "0.2.0" and release.devices == (kitchen,)
        feed = Core.open(store, release.key)
        assert feed.length == release.length
        manifest = assemble(release, feed.get, tmp_path / "out")
    assert [f.name for f in manifest.files] == [main.name, extra.name]
    assert (tmp_path / "out" / main.name).read_bytes() == main.read_bytes()

    # The same version again is refused unless it is meant as a downgrade.
    code, _, err = run_cli(capsys, "release", "publish", str(main), "--no-wait")
    assert code == 2 and err.count("\n") == 1 and "--allow-downgrade" in err
    code, _, err = run_cli(capsys, "release", "publish", str(main), "--no-wait", "--allow-downgrade")
    assert code == 0, err

    code, out, err = run_cli(capsys, "release", "status", "--timeout", "0")
    assert code == 0, err
    assert "latest release: 0.2.0" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["hallway", "kitchen"]
    assert all("no report yet" in line for line in out.splitlines()[2:])


def test_publish_mistakes_are_one_line(tmp_path: Path, hyperpi_home: Path, owner: bytes, capsys) -> None:
    record_device(hyperpi_home, "kitchen", owner)
    other = fake_wheel(tmp_path, "requests", "2.0")
    odd = fake_wheel(tmp_path, "hyperpi", "2.0rc1")
    not_a_wheel = tmp_path / "hyperpi-0.3.0-py3-none-any.whl"
    not_a_wheel.write_bytes(b"nope")
    for argv, says in [
        ([str(other)], "not of hyperpi"),
        ([str(odd)], "dotted numbers"),
        ([str(not_a_wheel)], "is not a wheel"),
        ([str(tmp_path / "missing.whl")], "no such file"),
        ([str(fake_wheel(tmp_path, "hyperpi", "0.4.0")), "--device", "nobody"], "no device named"),
    ]:
        code, _, err = run_cli(capsys, "release", "publish", *argv, "--no-wait")
        assert code == 2 and err.count("\n") == 1 and says in err, (argv, err)
        assert "Traceback" not in err


def test_publish_says_which_packages_a_device_lacks(tmp_path: Path, hyperpi_home: Path, owner: bytes, capsys) -> None:
    """From the packages a device listed in its last status block (device/update.py)."""
    from hyperpi_host import keys

    feed = generate_keypair()
    record_device(hyperpi_home, "kitchen", owner, feed)
    with keys.open_store() as store:  # the device's feed as `release status` fetched it
        status = {"type": "status", "version": "0.1.0", "packages": ["pynacl==1.5.0", "pillow==10.0.0"]}
        Core.create(store, feed).append([json.dumps(status).encode()])
    requires = (
        "PyNaCl>=1.5",
        "new_thing>=1; extra == 'device'",
        'pillow>=10; extra == "device"',
        "lgpio>=0.2; platform_machine == 'aarch64' and extra == 'device'",  # not judged from here
        "zxing-cpp; extra == 'host'",
    )
    main = fake_wheel(tmp_path, "hyperpi", "0.2.0", requires=requires)
    code, _, err = run_cli(capsys, "release", "publish", str(main), "--no-wait")
    assert code == 0 and err == (
        "hyperpi: warning: kitchen reported no new-thing, which hyperpi 0.2.0 needs; "
        "its install will fail unless their wheels come with --wheel FILE\n"
    )
    extra = fake_wheel(tmp_path, "New.Thing", "1.0")
    code, _, err = run_cli(
        capsys, "release", "publish", str(main), "--wheel", str(extra), "--no-wait", "--allow-downgrade"
    )
    assert code == 0 and err == ""


@pytest.mark.parametrize(
    ("update", "shown"),
    [
        (None, "-"),
        ({"version": "0.3.0", "state": "downloading", "progress": 42}, "downloading 0.3.0: 42%"),
        ({"version": "0.3.0", "state": "installed"}, "installed 0.3.0"),
        (
            {"version": "0.3.0", "state": "failed", "reason": "not enough free space"},
            "failed 0.3.0: not enough free space",
        ),
        ({"version": "0.3.0", "state": "rolled back", "reason": "not confirmed"}, "rolled back 0.3.0: not confirmed"),
        ("junk", "-"),
    ],
)
def test_status_lines(update: object, shown: str) -> None:
    from hyperpi_host.release import describe

    status = {"type": "status", "version": "0.2.0", **({"update": update} if update is not None else {})}
    assert describe(status) == ("0.2.0", shown)
    assert describe(None) == ("?", "no report yet")
