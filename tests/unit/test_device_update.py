"""Updates, without a network: the bundle format, the control feed's release entry, the update
state machine (device/update.py), and the launcher's decisions (device/launch.py), including
power cuts (SIGKILL) at random points of an install, a switch and a rollback."""

from __future__ import annotations

import json
import os
import random
import signal
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from hyperpi.device import install as install_module
from hyperpi.device.bundle import (
    CHUNK_BYTES,
    MAX_RELEASE_BYTES,
    feed_length,
    make_bundle,
    parse_manifest,
    parse_version,
    split_files,
)
from hyperpi.device.control import ControlState, Release, parse_entry
from hyperpi.device.install import EXIT_UPDATED, InstallError, install
from hyperpi.device.launch import MAX_START_ATTEMPTS, choose, decide
from hyperpi.device.releases import Pending, Releases
from hyperpi.device.timeline import Timeline, is_status_block
from hyperpi.device.update import PROGRESS_STEP, Drop, Fetch, Install, Publish, Updater
from hyperpi.hypercore import Core, Store, z32_encode

ROOT = Path(__file__).resolve().parents[2]
WHEEL = "hyperpi-0.2.0-py3-none-any.whl"


def bundle_of(version: str = "0.2.0", size: int = 3 * CHUNK_BYTES + 100):
    data = random.Random(size).randbytes(size)
    return make_bundle(
        version, [(f"hyperpi-{version}-py3-none-any.whl", data), ("dep-1.0-py3-none-any.whl", b"d" * 10)]
    )


def release_of(bundle, key: bytes = b"\x01" * 32, **extra) -> Release:
    return Release(bundle.manifest.version, key, len(bundle.blocks), bundle.size, bundle.sha256, **extra)


def entry(**fields) -> bytes:
    value = {"type": "release", "version": "0.2.0", "key": z32_encode(b"\x01" * 32), "length": 2, "size": 10}
    value["sha256"] = "ab" * 32
    value.update(fields)
    return json.dumps({k: v for k, v in value.items() if v is not None}).encode()


# --- the bundle -----------------------------------------------------------------------------------


def test_bundle_blocks_split_back_into_the_files() -> None:
    bundle = bundle_of()
    assert len(bundle.blocks) == feed_length(bundle.size) == 1 + 4
    assert all(len(b) == CHUNK_BYTES for b in bundle.blocks[1:-1]) and len(bundle.blocks[-1]) == 110
    manifest = parse_manifest(bundle.blocks[0])
    pieces: dict[int, bytes] = {}
    for index, piece in split_files(manifest, bundle.blocks[1:]):
        pieces[index] = pieces.get(index, b"") + piece
    assert [len(pieces[i]) for i in range(2)] == [3 * CHUNK_BYTES + 100, 10]
    with pytest.raises(ValueError, match="wrong size"):
        list(split_files(manifest, [bundle.blocks[1][:-1], *bundle.blocks[2:]]))
    with pytest.raises(ValueError, match="manifest says"):
        list(split_files(manifest, bundle.blocks[1:-1]))


@pytest.mark.parametrize(
    ("name", "size", "problem"),
    [
        ("../evil.whl", 1, "wheel's file name"),
        ("x/y.whl", 1, "wheel's file name"),
        ("notes.txt", 1, "wheel's file name"),
        (".hidden.whl", 1, "wheel's file name"),
        (WHEEL, 0, "size"),
        (WHEEL, MAX_RELEASE_BYTES + 1, "size"),
    ],
)
def test_manifest_refuses_what_a_device_must_not_write(name: str, size: int, problem: str) -> None:
    block = json.dumps(
        {"type": "hyperpi-release", "version": "0.2.0", "files": [{"name": name, "size": size, "sha256": "0" * 64}]}
    ).encode()
    with pytest.raises(ValueError, match=problem):
        parse_manifest(block)


def test_versions_compare_as_numbers_and_odd_ones_are_refused() -> None:
    assert parse_version("0.10.0") > parse_version("0.9.9") and parse_version("1.0") == parse_version("1.0.0")
    for bad in ("", "1.0rc1", "v1", "01.2", "1..2", "1.2.3.4.5.6", 3, None, "9" * 40):
        with pytest.raises(ValueError):
            parse_version(bad)


# --- the control feed's entry ----------------------------------------------------------------------


def test_release_entry_is_parsed_within_bounds() -> None:
    e = parse_entry(entry(devices=[z32_encode(b"\x02" * 32)], downgrade=True))
    assert e.release == Release("0.2.0", b"\x01" * 32, 2, 10, "ab" * 32, (b"\x02" * 32,), True)
    for fields, problem in [
        ({"length": 3}, "length must be 2"),
        ({"size": MAX_RELEASE_BYTES + 1, "length": feed_length(MAX_RELEASE_BYTES + 1)}, "size must be"),
        ({"size": True}, "size must be"),
        ({"sha256": "AB" * 32}, "sha256"),
        ({"version": "2.0-beta"}, "version"),
        ({"devices": []}, "devices"),
        ({"devices": ["nope"]}, "."),
        ({"downgrade": "yes"}, "downgrade"),
        ({"key": None}, "key"),
    ]:
        with pytest.raises(ValueError, match=problem):
            parse_entry(entry(**fields))


def test_release_entry_reaches_only_the_devices_it_names() -> None:
    mine, other = b"\x02" * 32, b"\x03" * 32
    for devices, meant in [(None, True), ([z32_encode(mine)], True), ([z32_encode(other)], False)]:
        state = ControlState(mine)
        change = state.apply(0, parse_entry(entry(devices=devices)))
        assert (change is not None) is meant and state.follows == {}


# --- the state machine ------------------------------------------------------------------------------


def test_a_newer_release_is_fetched_tracked_installed() -> None:
    bundle = bundle_of(size=9 * CHUNK_BYTES)
    release = release_of(bundle)
    updater = Updater("0.1.0")
    updater.offer(release)
    effects = updater.decide()
    assert effects[0] == Fetch(release)
    assert isinstance(effects[1], Publish) and effects[1].status["update"]["state"] == "downloading"
    published = []
    for held in range(release.length):
        for effect in updater.on_progress(held):
            assert not isinstance(effect, Install)
            published.append(effect.status["update"]["progress"])  # type: ignore[union-attr]
    assert published == sorted(set(published)) and all(p % PROGRESS_STEP < 10 for p in published)
    assert updater.screen_line() == f"update 0.2.0: {updater.progress}%"
    effects = updater.on_progress(release.length)
    assert effects[0] == Install(release) and updater.screen_line() == "update 0.2.0: installing"
    assert updater.on_progress(release.length) == []  # installing once
    [done] = updater.on_installed(None)
    assert done.status["update"] == {"version": "0.2.0", "state": "installed"}  # type: ignore[union-attr]


def test_a_failed_install_is_reported_and_never_retried() -> None:
    release = release_of(bundle_of())
    updater = Updater("0.1.0")
    updater.offer(release)
    updater.decide()
    updater.on_progress(release.length)
    effects = updater.on_installed("the bundle's sha256 is not the one announced")
    assert effects[0] == Drop(release.key)
    assert effects[1].status["update"] == {  # type: ignore[union-attr]
        "version": "0.2.0",
        "state": "failed",
        "reason": "the bundle's sha256 is not the one announced",
    }
    updater.offer(release)  # read again from the control feed (a restart replays it)
    assert updater.decide() == []
    again = Updater("0.1.0", failed={"0.2.0": "rolled back: not confirmed after 2 starts"})
    again.offer(release)
    [status] = again.decide()
    assert status.status["update"]["state"] == "rolled back"  # type: ignore[union-attr]


def test_which_versions_are_taken() -> None:
    def first(running: str, version: str, downgrade: bool = False) -> object:
        updater = Updater(running)
        updater.offer(release_of(bundle_of(version), downgrade=downgrade))
        effects = updater.decide()
        assert isinstance(effects[-1], Publish)  # the first status after a start
        return (effects[0].release.version if isinstance(effects[0], Fetch) else None), effects[-1].status.get("update")

    assert first("0.1.0", "0.2.0") == ("0.2.0", {"version": "0.2.0", "state": "downloading", "progress": 0})
    assert first("0.3.0", "0.2.0") == (None, None)  # older: only with downgrade
    assert first("0.3.0", "0.2.0", downgrade=True)[0] == "0.2.0"
    assert first("0.2.0", "0.2.0", downgrade=True) == (None, {"version": "0.2.0", "state": "running"})
    # The last announcement wins: a newer one mid-download drops the old feed.
    updater = Updater("0.1.0")
    old, new = release_of(bundle_of("0.2.0"), b"\x01" * 32), release_of(bundle_of("0.3.0"), b"\x04" * 32)
    updater.offer(old)
    updater.decide()
    updater.offer(new)
    effects = updater.decide()
    assert effects[:2] == [Drop(old.key), Fetch(new)]


def test_status_blocks_are_not_messages(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as store:
        core = Core.create(store)
        status = json.dumps({"type": "status", "version": "0.1.0"}).encode()
        chat = json.dumps({"type": "chat", "text": "status", "time": 1, "nick": "a"}).encode()
        core.append([status, chat, status])
        timeline = Timeline(b"\x09" * 32)
        assert [m.text for m in timeline.update(core)] == ["status"]
        assert is_status_block(status) and not is_status_block(chat)


# --- the launcher ---------------------------------------------------------------------------------


def test_launcher_decisions() -> None:
    usable = {"0.2.0-a", "0.1.5-b"}
    assert decide(None, None, usable).run is None
    assert decide("0.2.0-a", None, usable).run == "0.2.0-a"
    d = decide("0.2.0-a", Pending("0.2.0-a", "0.1.5-b", 0), usable)
    assert d.run == "0.2.0-a" and d.pending == Pending("0.2.0-a", "0.1.5-b", 1)
    d = decide("0.2.0-a", Pending("0.2.0-a", "0.1.5-b", MAX_START_ATTEMPTS), usable)
    assert (d.run, d.set_current, d.clear_pending) == ("0.1.5-b", True, True)
    assert d.record_failed == ("0.2.0-a", f"rolled back: not confirmed after {MAX_START_ATTEMPTS} starts")
    d = decide("0.2.0-a", Pending("0.2.0-a", "0.1.0-gone", MAX_START_ATTEMPTS), usable)
    assert d.run is None  # the previous one is gone: the factory version
    d = decide("0.1.5-b", Pending("0.2.0-a", "0.1.5-b", 0), usable)  # cut before the switch
    assert (d.run, d.clear_pending, d.record_failed) == ("0.1.5-b", True, None)
    d = decide("0.3.0-c", Pending("0.3.0-c", None, 0), usable)  # an incomplete folder
    assert d.run is None and d.record_failed == ("0.3.0-c", "rolled back: its environment is incomplete")
    assert decide("0.3.0-c", None, usable).run is None


def test_launcher_rolls_back_after_two_unconfirmed_starts(tmp_path: Path) -> None:
    releases = Releases(tmp_path)
    fake_release(releases, "0.1.5-b", "0.1.5")
    fake_release(releases, "0.2.0-a", "0.2.0")
    releases.set_current("0.2.0-a")
    releases.set_pending(Pending("0.2.0-a", "0.1.5-b", 0))
    assert [choose(releases) for _ in range(MAX_START_ATTEMPTS + 2)] == [
        *["0.2.0-a"] * MAX_START_ATTEMPTS,
        "0.1.5-b",
        "0.1.5-b",
    ]
    assert releases.current() == "0.1.5-b" and releases.pending() is None
    assert releases.failed() == {"0.2.0": f"rolled back: not confirmed after {MAX_START_ATTEMPTS} starts"}


def fake_release(releases: Releases, name: str, version: str) -> None:
    """A complete-looking release folder: what the launcher checks (device/releases.py usable)."""
    exe = releases.executable(name)
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!/bin/sh\necho hyperpi-device {version}\n")
    exe.chmod(0o755)
    (releases.path(name) / "release.json").write_text(json.dumps({"version": version}))


def fake_run(args, what: str) -> str:
    """install.py's subprocess step without venv and pip (each would take seconds): it writes the
    files those write, file by file, so a kill can land between them."""
    args = [str(a) for a in args]
    if args[1:3] == ["-m", "venv"]:
        venv = Path(args[-1])
        (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages").mkdir(
            parents=True
        )
        (venv / "bin").mkdir()
        return ""
    if "pip" in args:
        venv = Path(args[0]).parents[1]
        version = Path([a for a in args if a.endswith(".whl")][0]).name.split("-")[1]
        exe = venv / "bin" / "hyperpi-device"
        exe.write_text(f"#!/bin/sh\necho hyperpi-device {version}\n")
        exe.chmod(0o755)
        return ""
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def test_fifty_power_cuts_leave_a_version_that_boots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL at a random step of an install + switch, then of the launcher's own writes; after
    each cut, the launcher picks the factory version or a complete folder, and a second
    start without cuts agrees with what is on disk."""
    monkeypatch.setattr(install_module, "_run", fake_run)
    # A SIGKILL keeps the page cache, so syncing the whole machine's disks 50 times (seconds each
    # while an image builds) tests nothing here; the order of the atomic steps is what is tested.
    monkeypatch.setattr(os, "sync", lambda: None)
    rng = random.Random(7)
    outcomes = set()
    for round_ in range(50):
        outcomes.add(_one_power_cut(Releases(tmp_path / f"s{round_}"), rng, round_))
    # The cuts landed on both sides of the switch.
    assert {ran_new for _, ran_new in outcomes} == {True, False}


STEPS = ["space", "assemble", "venv", "pip", "check", "sync", "mark", "pending", "switch", "end"]


def _one_power_cut(releases: Releases, rng: random.Random, round_: int) -> tuple[str, bool]:
    """One install cut at a random step, then starts (some cut too) until settled; (the step
    cut at, whether the new version ever ran)."""
    releases.ensure()
    if rng.random() < 0.5:  # sometimes an update was installed before
        fake_release(releases, "0.1.5-old", "0.1.5")
        releases.set_current("0.1.5-old")
    bundle = bundle_of("0.2.0", size=rng.randrange(1, 3 * CHUNK_BYTES))
    release = release_of(bundle)
    cut_at = rng.choice(STEPS)
    blocks_before_cut = rng.randrange(len(bundle.blocks) + 1)

    def get_block(i: int) -> bytes:
        if cut_at == "assemble" and i == blocks_before_cut:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-way through the downloaded blocks
        return bundle.blocks[i]

    def step(name: str) -> None:
        if name == cut_at:
            os.kill(os.getpid(), signal.SIGKILL)

    in_child(lambda: install(releases, release, get_block, factory_site=[], step=step))
    # Starts of a new version that never confirms, each possibly cut inside the launcher's writes.
    for _ in range(rng.randrange(0, MAX_START_ATTEMPTS + 2)):
        fraction = rng.random()
        in_child(lambda fraction=fraction: _choose_then_cut(releases, fraction))
        check_bootable(releases)
    ran_new = False
    for _ in range(MAX_START_ATTEMPTS + 2):  # starts without cuts
        chosen = choose(releases)
        assert chosen is None or releases.usable(chosen), (round_, cut_at, chosen)
        ran_new = ran_new or (chosen or "").startswith("0.2.0")
    assert releases.pending() is None, (round_, cut_at)  # rolled back, or the switch never happened
    assert not ran_new or "0.2.0" in releases.failed()
    return cut_at, ran_new


def _choose_then_cut(releases: Releases, fraction: float) -> None:
    # A cut somewhere in the launcher's writes: let it run, then kill at a random point by timer.
    import threading

    threading.Timer(fraction * 0.002, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    choose(releases)


def check_bootable(releases: Releases) -> None:
    current = releases.current()
    assert current is None or releases.usable(current), current


def in_child(body) -> None:
    """Run `body` in a forked child (killed or not); the parent waits."""
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            body()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# --- a real install ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel_0_2_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.release_wheels import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheels"), "0.2.0")


def test_a_real_wheel_installs_beside_and_the_launcher_runs_it(tmp_path: Path, wheel_0_2_0: Path) -> None:
    bundle = make_bundle("0.2.0", [(wheel_0_2_0.name, wheel_0_2_0.read_bytes())])
    releases = Releases(tmp_path)
    tampered = release_of(bundle)
    bad = Release(tampered.version, tampered.key, tampered.length, tampered.size, "0" * 64)
    with pytest.raises(InstallError, match="sha256"):
        install(releases, bad, lambda i: bundle.blocks[i], factory_site=site.getsitepackages())
    assert releases.installed() == [] and releases.current() is None

    name = install(releases, release_of(bundle), lambda i: bundle.blocks[i], factory_site=site.getsitepackages())
    assert releases.current() == name and releases.pending() == Pending(name, None, 0)
    launched = subprocess.run(
        [sys.executable, "-m", "hyperpi.device.launch", "--state-dir", str(tmp_path), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert launched.stdout.splitlines() == [
        f"hyperpi-launch: starting {name}, not yet confirmed (start 1 of {MAX_START_ATTEMPTS})",
        "hyperpi-device 0.2.0",
    ], launched.stderr
    assert releases.pending() == Pending(name, None, 1)


def test_the_unit_restarts_on_the_update_exit_code() -> None:
    unit = (ROOT / "firmware" / "hyperpi-device.service").read_text()
    assert f"\nRestartForceExitStatus={EXIT_UPDATED}\n" in unit


# --- the adapter, on a real service and store -----------------------------------------------------


def test_the_service_fetches_installs_reports_and_frees_a_release(
    tmp_path: Path, wheel_0_2_0: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's control feed and the release feed are in the device's store already (as if
    replicated): the runner installs, switches, asks to exit with EXIT_UPDATED and says so in
    status blocks; started again as 0.2.0 it reports `running` and frees the release's blocks."""
    import asyncio

    from hyperpi.device.config import DeviceConfig
    from hyperpi.device.launch import FACTORY_SITE_ENV
    from hyperpi.device.service import DeviceService
    from hyperpi.device.updating import UpdateRunner

    monkeypatch.setenv(FACTORY_SITE_ENV, os.pathsep.join(site.getsitepackages()))
    bundle = make_bundle("0.2.0", [(wheel_0_2_0.name, wheel_0_2_0.read_bytes())])
    store = Store(tmp_path / "store")
    own, control, feed = Core.create(store), Core.create(store), Core.create(store)
    feed.append(list(bundle.blocks))
    release = release_of(bundle, feed.key)
    config = DeviceConfig(name="kitchen", board="headless", owner=control.key)

    def statuses() -> list[dict]:
        blocks = [json.loads(own.get(i)) for i in range(own.length)]
        return [
            {k: v for k, v in b.items() if k not in ("time", "packages")} for b in blocks if b.get("type") == "status"
        ]

    async def run(running: str) -> tuple[UpdateRunner, int | None]:
        service = DeviceService(config, store, own, state_dir=tmp_path)
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        runner = UpdateRunner(service, tmp_path, running, exited.set_result, enabled=True)
        service.start()  # as main.py does: statuses wait for it (a new feed's first block is "online")
        if control.length == 0:  # announced while running: the control feed's event reaches the runner
            control.append([entry(version="0.2.0", key=z32_encode(feed.key), length=release.length,
                                  size=release.size, sha256=release.sha256)])  # fmt: skip
        try:
            code = await asyncio.wait_for(asyncio.shield(exited), 120) if running == "0.1.0" else None
        finally:
            service.close()
        return runner, code

    runner, code = asyncio.run(run("0.1.0"))
    releases = Releases(tmp_path)
    assert code == EXIT_UPDATED and releases.current() is not None and releases.usable(releases.current())
    assert runner.service.app.update_line == "update 0.2.0: installed"
    assert [s.get("update", {}).get("state") for s in statuses()] == [None, "downloading", "installing", "installed"]
    assert json.loads(own.get(0))["text"] == "kitchen is online"
    packages = json.loads(own.get(own.length - 1))["packages"]  # what this environment has, for the host
    assert "pynacl==" + metadata.version("pynacl") in packages and "hyperpi==0.1.0" in packages

    runner, _ = asyncio.run(run("0.2.0"))  # the restart, as the new version
    assert statuses()[-1] == {"type": "status", "version": "0.2.0", "update": {"version": "0.2.0", "state": "running"}}
    assert Core.open(store, feed.key).contiguous_length == 0  # the bundle's blocks are freed
    store.close()


def test_a_release_naming_one_of_the_devices_feeds_is_refused(tmp_path: Path) -> None:
    """The owner's mistake (the own feed's key as a release feed) fails the release, and never
    clears that feed from the store."""
    import asyncio

    from hyperpi.device.config import DeviceConfig
    from hyperpi.device.service import DeviceService
    from hyperpi.device.updating import UpdateRunner

    store = Store(tmp_path / "store")
    own, control = Core.create(store), Core.create(store)
    control.append([entry(key=z32_encode(own.key))])
    config = DeviceConfig(name="kitchen", board="headless", owner=control.key)

    async def run() -> DeviceService:
        service = DeviceService(config, store, own, state_dir=tmp_path)
        UpdateRunner(service, tmp_path, "0.1.0", lambda code: None, enabled=True)
        service.start()
        service.close()
        return service

    service = asyncio.run(run())
    assert service.release_core is None and Releases(tmp_path).failed() == {
        "0.2.0": "failed: the release names one of the device's own, control or followed feeds"
    }
    last = json.loads(own.get(own.length - 1))
    assert last["update"]["state"] == "failed" and json.loads(own.get(0))["text"] == "kitchen is online"
    store.close()
