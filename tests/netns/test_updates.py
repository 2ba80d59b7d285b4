"""Updates over a real LAN of network namespaces (needs root): `hyperpi release publish` on the
owner's host (namespace c) and `hyperpi-device --simulate` processes (a, b) started through
`hyperpi-launch` by a small supervisor standing in for systemd (it restarts the process whenever
it exits, as Restart=on-failure and RestartForceExitStatus=42 do, and listens on NOTIFY_SOCKET).

- A new version (a wheel of this checkout with a bumped version, built in a temporary copy) is
  downloaded, installed beside the factory one, switched to, confirmed, and reported by both
  devices; then a broken one (its service raises at start) is installed, crashes twice, is
  rolled back by the launcher, and the devices report that.
- A release entry in a followed feed that is not the owner's control feed is ignored; a
  download cut halfway (the device killed while the host's link is throttled) resumes after the
  restart from the blocks already held, and an extra wheel given with `--wheel` is installed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from tests.netns.conftest import ROOT, NetnsLan
from tests.release_wheels import build_wheel

STEP = 90.0  # s for one step (an install runs pip and a fresh interpreter on a busy 2-core machine)
HEALTHY = "3"  # s a new version runs before it confirms itself (HYPERPI_HEALTHY_SECONDS)


class Supervised:
    """systemd in miniature for one device: runs `python -m hyperpi.device.launch ...` in its
    namespace, restarts it after every exit, and counts READY=1 on its NOTIFY_SOCKET."""

    def __init__(self, lan: NetnsLan, ns: str, state: Path, config: Path, tmp: Path) -> None:
        self.lan, self.ns, self.state, self.config = lan, ns, state, config
        self.lines: list[str] = []
        self.exits: list[int] = []
        self.ready = 0
        self.changed = threading.Condition()
        self.stopping = False
        self.process: subprocess.Popen[str] | None = None
        self.socket_path = tmp / f"notify-{ns}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.socket_path))
        threading.Thread(target=self._listen, daemon=True).start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while True:
            try:
                data = self.notify.recv(4096)
            except OSError:
                return
            if b"READY=1" in data:
                with self.changed:
                    self.ready += 1
                    self.changed.notify_all()

    def _run(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=str(self.socket_path))
        env["HYPERPI_HEALTHY_SECONDS"] = HEALTHY
        while not self.stopping:
            self.process = self.lan.popen(
                self.ns, sys.executable, "-m", "hyperpi.device.launch", "--state-dir", str(self.state),
                "--config", str(self.config), "--simulate", "--lan",
                stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
            )  # fmt: skip
            assert self.process.stdout is not None
            for line in self.process.stdout:
                with self.changed:
                    self.lines.append(line.rstrip())
                    self.changed.notify_all()
            code = self.process.wait()
            with self.changed:
                self.exits.append(code)
                self.lines.append(f"[supervisor] exit {code}")
                self.changed.notify_all()
            time.sleep(0.5)  # RestartSec, shortened

    def wait_for(self, *needles: str, since: int = 0, timeout: float = STEP) -> int:
        """The index of the first line at or after `since` containing every needle."""

        def found() -> int | None:
            for index in range(since, len(self.lines)):
                if all(n in self.lines[index] for n in needles):
                    return index
            return None

        with self.changed:
            if not self.changed.wait_for(lambda: found() is not None, timeout=timeout):
                raise AssertionError(f"{self.ns}: no line with {needles} in {timeout:.0f} s:\n" + "\n".join(self.lines))
            return found()  # type: ignore[return-value]

    def wait_ready(self, count: int, timeout: float = 10) -> int:
        """READY=1 datagrams seen, once there are `count` (or after `timeout`): the service logs
        "ready in" right after sending one, so the datagram may still be on its way."""
        with self.changed:
            self.changed.wait_for(lambda: self.ready >= count, timeout=timeout)
            return self.ready

    def kill(self) -> None:
        """A power cut, for this process: SIGKILL (the supervisor starts it again)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.thread.join(timeout=30)
        self.notify.close()


def make_device(home: Path, tmp: Path, name: str, control: bytes, follow: bytes | None = None) -> Path:
    """A device's keys, settings and the record `hyperpi provision` would have written
    (hyperpi_host/provisioning.py); returns the settings file."""
    from hyperpi.device.main import FEED_SECRET, NOISE_SECRET, load_secret
    from hyperpi.hypercore import core_key

    state = tmp / name
    state.mkdir(mode=0o700)
    feed = core_key(load_secret(state / FEED_SECRET).public_key)
    noise = load_secret(state / NOISE_SECRET).public_key
    config = tmp / f"{name}.toml"
    text = f'name = "{name}"\nboard = "headless"\nstate_dir = "{state}"\nowner = "{control.hex()}"\n'
    if follow is not None:
        text += f'[[follow]]\nname = "friend"\nkey = "{follow.hex()}"\n'
    config.write_text(text)
    (home / "devices").mkdir(mode=0o700, exist_ok=True)
    record = {"board": "headless", "feed_key_hex": feed.hex(), "noise_public_key_hex": noise.hex()}
    record["owner_hex"] = control.hex()
    (home / "devices" / f"{name}.json").write_text(json.dumps(record))
    return config


def hyperpi(lan: NetnsLan, home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HYPERPI_HOME=str(home))
    return lan.run(
        "c", sys.executable, "-m", "hyperpi_host.cli", *args, env=env, timeout=timeout, check=False, cwd=ROOT
    )


def status_rows(lan: NetnsLan, home: Path) -> dict[str, str]:
    done = hyperpi(lan, home, "release", "status", "--owner", "ana", "--timeout", "8")
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in ("kitchen", "hallway"):
            rows[parts[0]] = " ".join(parts[1].split())
    return rows


@pytest.fixture
def owner_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    home = tmp_path / "home"
    monkeypatch.setenv("HYPERPI_HOME", str(home))
    from hyperpi_host import cli, keys

    assert cli.main(["keys", "new", "--owner", "ana"]) == 0
    control = keys.load_identity("ana").control_feed_key
    assert control is not None
    return home, control


def test_update_is_installed_and_a_broken_one_rolled_back(
    lan: NetnsLan, tmp_path: Path, owner_home: tuple[Path, bytes]
) -> None:
    home, control = owner_home
    good = build_wheel(tmp_path / "w", "0.2.0")
    broken = build_wheel(tmp_path / "w", "0.3.0", broken=True)
    devices = {
        ns: Supervised(lan, ns, tmp_path / name, make_device(home, tmp_path, name, control), tmp_path)
        for ns, name in (("a", "kitchen"), ("b", "hallway"))
    }
    try:
        for device in devices.values():
            device.wait_for("ready in", "(hyperpi 0.1.0)")

        published = hyperpi(lan, home, "release", "publish", str(good), "--owner", "ana", "--timeout", "200")
        assert published.returncode == 0, published.stdout + published.stderr
        assert "kitchen has downloaded 0.2.0" in published.stdout and "hallway has downloaded 0.2.0" in published.stdout
        for device in devices.values():
            at = device.wait_for("update 0.2.0: installed")
            at = device.wait_for("[supervisor] exit 42", since=at)
            at = device.wait_for("hyperpi-launch: starting 0.2.0-", "not yet confirmed", since=at)
            at = device.wait_for("ready in", "(hyperpi 0.2.0)", since=at)
            device.wait_for("update to 0.2.0-", "confirmed", since=at)
        assert status_rows(lan, home) == {"kitchen": "0.2.0 running 0.2.0", "hallway": "0.2.0 running 0.2.0"}

        published = hyperpi(lan, home, "release", "publish", str(broken), "--owner", "ana", "--timeout", "200")
        assert published.returncode == 0, published.stdout + published.stderr
        for device in devices.values():
            at = device.wait_for("update 0.3.0: installed")
            at = device.wait_for("hyperpi-launch: rolling back 0.3.0-", "not confirmed after 2 starts", since=at)
            device.wait_for("ready in", "(hyperpi 0.2.0)", since=at)
            assert device.exits[-3:] == [42, 1, 1]  # installed, then two crashed starts
            assert sum(line.startswith("RuntimeError: this release is broken") for line in device.lines) == 2
            assert device.wait_ready(3) == 3  # READY=1 through the launcher's exec: 0.1.0, 0.2.0, 0.2.0 again
        rows = status_rows(lan, home)
        assert rows == {
            name: "0.2.0 rolled back 0.3.0: not confirmed after 2 starts" for name in ("kitchen", "hallway")
        }, rows
    finally:
        for device in devices.values():
            device.stop()
    for device in devices.values():
        tracebacks = sum(line.startswith("Traceback") for line in device.lines)
        assert tracebacks == 2, "\n".join(device.lines)  # the broken version's two starts only
        assert device.exits[-1] == 0  # stopped by SIGTERM, cleanly


FRIEND = r"""
import asyncio, json, sys
from pathlib import Path
from hyperpi.device.bundle import make_bundle
from hyperpi.hypercore import Core, Store, z32_encode
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

async def main(folder):
    store = Store(Path(folder))
    chat = Core.create(store)
    bundle = make_bundle("9.0.0", [("hyperpi-9.0.0-py3-none-any.whl", b"not from the owner")])
    feed = Core.create(store)
    feed.append(list(bundle.blocks))
    print(json.dumps({"chat": chat.key.hex(), "release": feed.key.hex()}), flush=True)
    sys.stdin.readline()  # the device's settings are written: announce
    chat.append([json.dumps({"type": "release", "version": "9.0.0", "key": z32_encode(feed.key),
                             "length": feed.length, "size": bundle.size, "sha256": bundle.sha256}).encode()])
    cores = CoreSet(store, [chat, feed])
    swarm = Swarm(keypair(), name="friend", on_connection=lambda conn: replicate(conn, cores))
    for core in cores:
        await swarm.join(core.discovery_key)
    await swarm.start()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await swarm.stop()

asyncio.run(main(sys.argv[1]))
"""


def pad_wheel(folder: Path, size: int) -> Path:
    """A real installable wheel of `size` random bytes: a dependency the devices lack, given with --wheel."""
    files = {"pad_data/__init__.py": b"", "pad_data/blob.bin": os.urandom(size)}
    files["pad-1.0.dist-info/METADATA"] = b"Metadata-Version: 2.1\nName: pad\nVersion: 1.0\n"
    files["pad-1.0.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("pad-1.0.dist-info/RECORD", record + "pad-1.0.dist-info/RECORD,,\n")
    path = folder / "pad-1.0-py3-none-any.whl"
    path.write_bytes(buffer.getvalue())
    return path


def test_foreign_announcement_ignored_and_a_cut_download_resumes(
    lan: NetnsLan, tmp_path: Path, owner_home: tuple[Path, bytes]
) -> None:
    home, control = owner_home
    good = build_wheel(tmp_path / "w", "0.2.0")
    pad = pad_wheel(tmp_path, 6 * 1024 * 1024)
    friend = lan.python("b", "-c", FRIEND, str(tmp_path / "friend"))
    assert friend.stdout is not None and friend.stdin is not None
    friend_keys = json.loads(friend.stdout.readline())
    config = make_device(home, tmp_path, "kitchen", control, follow=bytes.fromhex(friend_keys["chat"]))
    friend.stdin.write("go\n")
    friend.stdin.flush()
    device = Supervised(lan, "a", tmp_path / "kitchen", config, tmp_path)
    publisher = None
    try:
        device.wait_for("ready in", "(hyperpi 0.1.0)")
        device.wait_for("message from friend:", '"9.0.0"')  # the foreign entry arrived: a message, nothing more

        # The host's link throttled to ~4 Mbit/s, so the 6 MiB download takes a while.
        lan.run(
            "c", "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "4mbit", "burst", "32kb", "latency", "2s"
        )
        env = dict(os.environ, HYPERPI_HOME=str(home))
        publisher = lan.popen(
            "c", sys.executable, "-m", "hyperpi_host.cli", "release", "publish", str(good), "--wheel", str(pad),
            "--owner", "ana", "--timeout", "300", env=env, cwd=str(ROOT), stderr=subprocess.STDOUT,
        )  # fmt: skip
        at = device.wait_for("update 0.2.0: fetching", "0 held already")
        while True:  # the first published step past 0 %: part of the release is stored
            at = device.wait_for("'state': 'downloading', 'progress': ", since=at + 1)
            if int(device.lines[at].rsplit("'progress': ", 1)[1].rstrip("}")) > 0:
                break
        device.kill()
        lan.run("c", "tc", "qdisc", "del", "dev", "eth0", "root")
        at = device.wait_for("[supervisor] exit -9", since=at)
        at = device.wait_for("update 0.2.0: fetching", since=at)
        held = int(device.lines[at].rsplit(", ", 1)[1].split()[0])
        blocks = int(device.lines[at].split("fetching ")[1].split()[0])
        assert 0 < held < blocks, device.lines[at]  # resumed, not started again
        at = device.wait_for("update 0.2.0: installed", since=at)
        device.wait_for("ready in", "(hyperpi 0.2.0)", since=at)
        assert publisher.wait(timeout=STEP) == 0
        current = tmp_path / "kitchen" / "releases" / "current" / "venv" / "lib"
        assert [p.stat().st_size for p in current.glob("python3*/site-packages/pad_data/blob.bin")] == [6 * 1024 * 1024]
        assert not any("9.0.0" in line and "update" in line for line in device.lines), "\n".join(device.lines)
    finally:
        device.stop()
        friend.stdin.close()
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
    assert not any(line.startswith("Traceback") for line in device.lines), "\n".join(device.lines)
