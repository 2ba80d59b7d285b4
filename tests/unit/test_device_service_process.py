"""The `hyperpi-device` process: sd_notify READY/WATCHDOG/STOPPING, SIGTERM, secrets, simulation."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hyperpi.device import notify


def test_notify_sends_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert notify.notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is True
        assert sock.recv(100) == b"READY=1"
    abstract = f"@hyperpi-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + abstract[1:])
        assert notify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": abstract}) is True
        assert sock.recv(100) == b"WATCHDOG=1"
    assert notify.notify("READY=1", {}) is False  # not under systemd: a no-op
    assert notify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval() -> None:
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert notify.watchdog_interval({}) is None


def test_service_lifecycle(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "device.toml"
    config.write_text(
        f'name = "kitchen"\nboard = "oled-bonnet"\nstate_dir = "{state}"\npresets = ["Hi", "Yes"]\n'
        # The network runs too: on loopback only, no mDNS (no traffic off this machine).
        'listen_host = "127.0.0.1"\nlisten_port = 0\nmdns = false\n'
    )
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": ""}
    frames = tmp_path / "frames"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyperpi.device.main",
            "--config",
            str(config),
            "--simulate",
            "--frames",
            str(frames),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.decode()) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        got = set()
        while not {b"READY=1", b"WATCHDOG=1"} <= got:
            got.add(sock.recv(100))
        # Keys press the simulated buttons: the first press leaves the splash, "r" (joystick
        # right) selects the next preset, "b" (button B) sends it.
        assert proc.stdin is not None
        proc.stdin.write(b"rrb")
        proc.stdin.flush()
        log = wait_for(lines, "sent #1: ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()  # type: ignore[union-attr]
        reader.join(timeout=10)
        while (msg := sock.recv(100)) == b"WATCHDOG=1":
            pass
        assert msg == b"STOPPING=1"
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    while not lines.empty():
        log += lines.get()
    assert "sent #0: kitchen is online" in log and "sent #1: Yes" in log and "stopping" in log
    assert "Traceback" not in err.decode()
    for name in ("feed.secret", "noise.secret"):
        assert (state / name).stat().st_mode & 0o777 == 0o600
        assert (state / name).read_bytes().hex() not in log
    assert len(list(frames.glob("frame-*.png"))) >= 2


def wait_for(lines: queue.Queue[str], needle: str, timeout: float = 30) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        seen += lines.get(timeout=max(0.01, deadline - time.monotonic()))
    return seen


def run_device(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NOTIFY_SOCKET": ""}
    return subprocess.run(
        [sys.executable, "-m", "hyperpi.device.main", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_readable_secret_is_a_one_line_error_and_no_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "device.toml"
    config.write_text(f'name = "kitchen"\nstate_dir = "{state}"\n')
    state.mkdir()
    (state / "feed.secret").write_bytes(os.urandom(64))
    (state / "feed.secret").chmod(0o644)
    r = run_device(config)
    assert r.returncode == 69 and r.stderr.count("\n") == 1 and "chmod 600" in r.stderr
    assert "Traceback" not in r.stderr
    assert_no_restart_on(69)


def assert_no_restart_on(code: int) -> None:
    """systemd does not restart the service after this exit code (the unit's settings)."""
    unit = (Path(__file__).resolve().parents[2] / "firmware" / "hyperpi-device.service").read_text()
    [line] = [x for x in unit.splitlines() if x.startswith("RestartPreventExitStatus=")]
    assert str(code) in line.split("=", 1)[1].split()


def test_exit_codes_that_a_restart_cannot_cure_stop_systemd_restarting() -> None:
    from hyperpi.device import main

    for code in (main.EX_UNAVAILABLE, main.EX_DISK_FULL, main.EX_CONFIG):
        assert_no_restart_on(code)
    with pytest.raises(AssertionError):  # a store failed while running: the next start repairs it
        assert_no_restart_on(main.EX_STORE_FAILED)


def test_a_damaged_store_is_set_aside_and_the_device_starts(tmp_path: Path) -> None:
    from hyperpi.hypercore.storage import DB_NAME

    state = tmp_path / "state"
    config = tmp_path / "device.toml"
    config.write_text(
        f'name = "kitchen"\nstate_dir = "{state}"\n'
        'listen_host = "127.0.0.1"\nlisten_port = 0\nmdns = false\n'  # loopback only
    )
    state.mkdir(mode=0o700)
    from hyperpi.device.main import load_secret

    load_secret(state / "feed.secret")  # an identity older than the store
    (state / "store").mkdir(mode=0o700)
    damaged = b"not a database" * 100
    (state / "store" / DB_NAME).write_bytes(damaged)
    env = {**os.environ, "NOTIFY_SOCKET": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperpi.device.main", "--config", str(config), "--simulate"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.decode()) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        log = wait_for(lines, "ready in")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    while not lines.empty():
        log += lines.get()
    assert "feed store damaged" in log and "set aside as" in log
    assert "recovering it from peers before appending" in log
    assert "is online" not in log  # no block 0 before a peer could tell how long the feed is
    [aside] = (state / "store").glob(f"{DB_NAME}.damaged-*")
    assert aside.read_bytes() == damaged
    assert "Traceback" not in proc.stderr.read().decode()  # type: ignore[union-attr]
