"""A viewer that gets nothing says why, and -v shows every failed dial: the real `hyperpi` command
against a real writer on loopback (no mDNS)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperpi.hypercore import generate_keypair, z32_encode
from hyperpi.net import discovery

HINT_SECONDS = 0.5  # instead of chat.NOTHING_ARRIVES_HINT_SECONDS, to keep the test short
LOOPBACK = ["--listen", "127.0.0.1:0", "--no-mdns"]


def hyperpi(home: Path, *args: str, hint: float = HINT_SECONDS) -> subprocess.Popen[str]:
    code = (
        "import sys\nfrom hyperpi_host import chat, cli\n"
        f"chat.NOTHING_ARRIVES_HINT_SECONDS = {hint}\nsys.exit(cli.main(sys.argv[1:]))"
    )
    env = {**os.environ, "HYPERPI_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stderr_until(proc: subprocess.Popen[str], text: str, timeout: float = 30) -> str:
    """Lines of stderr until one holds `text` (then the process is stopped)."""
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return "".join(seen)
        pytest.fail(f"no {text!r} on stderr: {''.join(seen)}")
    finally:
        proc.kill()
        proc.wait(10)
    return ""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_viewer_connected_to_peers_without_the_feed_says_so(tmp_path: Path) -> None:
    writer = hyperpi(tmp_path / "w", "chat", "write", "--store", str(tmp_path / "writer"), "--nick", "a", *LOOPBACK)
    try:
        assert writer.stderr is not None
        address = ""
        while not address:  # "listening on 127.0.0.1:PORT"
            line = writer.stderr.readline()
            assert line, "the writer stopped"
            if line.startswith("listening on "):
                address = line.split()[-1]
        other_feed = z32_encode(generate_keypair().public_key)  # well-formed, but nobody has it
        viewer = hyperpi(tmp_path / "v", "chat", "view", other_feed, "--peer", address, *LOOPBACK)
        out = stderr_until(viewer, "none has feed")
    finally:
        writer.kill()
        writer.wait(10)
    assert f"hyperpi: connected to 1 peer; none has feed {other_feed[:12]}... (check the key; waiting on)" in out
    assert "Traceback" not in out


def test_a_viewer_with_no_peer_says_how_to_give_one(tmp_path: Path) -> None:
    key = z32_encode(generate_keypair().public_key)
    out = stderr_until(hyperpi(tmp_path, "chat", "view", key, *LOOPBACK), "no peer found yet")
    assert "hyperpi: no peer found yet (mDNS is off); if the writer is elsewhere, give --peer HOST:PORT" in out


def test_verbose_shows_each_failed_dial_with_its_reason(tmp_path: Path) -> None:
    key = z32_encode(generate_keypair().public_key)
    port = closed_port()
    viewer = hyperpi(tmp_path, "chat", "view", key, "--peer", f"127.0.0.1:{port}", "-v", *LOOPBACK, hint=60)
    out = stderr_until(viewer, f"dialling 127.0.0.1:{port} failed")
    assert "Connect call failed" in out or "refused" in out.lower(), out


def test_multicast_interfaces_follow_the_kernels_flags(tmp_path: Path) -> None:
    interfaces = discovery.ipv4_interfaces()
    if not interfaces:
        pytest.skip("this machine has no IPv4 interface besides loopback")
    name = interfaces[0][0]
    (tmp_path / name).mkdir()
    (tmp_path / name / "flags").write_text("0x1003\n")  # UP, BROADCAST, MULTICAST
    assert (name, interfaces[0][1]) in discovery.multicast_interfaces(tmp_path)
    (tmp_path / name / "flags").write_text("0x3\n")  # up, no multicast
    assert name not in [n for n, _ in discovery.multicast_interfaces(tmp_path)]


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs root (CI runs as root)")
def test_mdns_with_no_usable_interface_says_so(tmp_path: Path) -> None:
    key = z32_encode(generate_keypair().public_key)
    code = "import sys\nfrom hyperpi_host import cli\nsys.exit(cli.main(sys.argv[1:]))"
    env = {**os.environ, "HYPERPI_HOME": str(tmp_path)}
    # A fresh network namespace has only loopback: nothing mDNS can use.
    done = subprocess.run(
        [
            "unshare",
            "--net",
            "timeout",
            "5",
            sys.executable,
            "-c",
            code,
            "chat",
            "view",
            key,
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "hyperpi: no network interface here can do mDNS (none is up with multicast)" in done.stderr, done.stderr
    assert "give one with --peer HOST:PORT" in done.stderr and "Traceback" not in done.stderr
