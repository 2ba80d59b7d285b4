"""Boot the real image on an emulated Raspberry Pi 3 and chat with it (`make image-test` only).

Needs `make image` first (build/hyperpi-<version>-arm64.img) and qemu-system-aarch64. Collected
only when HYPERPI_IMAGE_TEST=1 (tests/image/conftest.py): one boot under full emulation takes
minutes, so plain `make test` leaves it out; CI runs it through `make image-test` (.ci/run).

One boot of a freshly provisioned copy checks, in order:
1. the service reports ready on the serial console;
2. `hyperpi chat view DEVICE_KEY --peer 127.0.0.1:PORT` (PORT forwarded to the device's
   replication port) receives the device's boot message;
3. a `hyperpi chat write` from the host, whose feed the device follows from provisioning, shows
   up in the device's log ("message from ...");
4. the booted system's own report: secret files 0600 and owned by the service user, no secret
   bytes on the FAT partition device, SSH host keys present, the root fs grown, the journal in
   RAM, no account with a password.
A second fresh copy of the same provisioned image is booted to compare SSH host keys.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "image"))

import qemu_boot

BUILD = ROOT / "build"
PORT = 49737  # the device's replication port (hyperpi.device.config.DEFAULT_PORT)
# Full-system emulation of a 4-core Pi 3 on 2 shared host cores: the kernel, systemd and a Python
# service start in minutes, not seconds. Generous, as a slow boot is not what this test judges.
BOOT_TIMEOUT_S = 1800
CHAT_TIMEOUT_S = 300
RESULTS = ROOT / "tests" / "bench" / "results" / "image_boot.json"


def hyperpi(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hyperpi_host.cli", *args], text=True, capture_output=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def built_image() -> Path:
    images = sorted(BUILD.glob("hyperpi-*-arm64.img"))
    if not images:
        pytest.fail("no build/hyperpi-*-arm64.img: run `make image` first (make image-test does)")
    if shutil.which("qemu-system-aarch64") is None:
        pytest.fail("qemu-system-aarch64 missing: apt-get install qemu-system-arm")
    return images[-1]


@pytest.mark.timeout(2 * BOOT_TIMEOUT_S + 4 * CHAT_TIMEOUT_S)
def test_boot_chat_and_hardening(built_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERPI_HOME", str(tmp_path / "home"))
    host_store = tmp_path / "host-feed"
    # The host's feed: `chat write` creates it and prints its key first; stopped right after.
    creator = chat_write(host_store, [])
    host_key = creator.stdout.readline().strip()
    creator.terminate()
    creator.wait(60)
    assert host_key, creator.stderr.read()

    card = tmp_path / "card.img"
    done = hyperpi("provision", str(built_image), "-o", str(card), "--device", "qemu-pi", "--board", "headless",
                   "--follow", f"host={host_key}", "--listen-port", str(PORT))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "home" / "devices" / "qemu-pi.json").read_text())
    marker = f"hello from the host {os.getpid()}"

    pi = qemu_boot.Raspi3(card, _workdir(tmp_path, "boot1"), PORT, check=True, marker=marker)
    pi.start()
    try:
        ready_s = pi.wait_for(re.escape(qemu_boot.READY_LINE), BOOT_TIMEOUT_S)
        peer = f"127.0.0.1:{pi.host_port}"

        view = hyperpi("chat", "view", record["feed_key"], "--store", str(tmp_path / "view"), "--peer", peer,
                       *LOOPBACK_ONLY, "--json", "--exit-after", "1", timeout=CHAT_TIMEOUT_S)
        assert view.returncode == 0, view.stderr
        boot_message = json.loads(view.stdout.splitlines()[0])
        assert boot_message["type"] == "chat" and boot_message["text"], boot_message

        writer = chat_write(host_store, ["--peer", peer])
        try:
            writer.stdin.write(marker + "\n")
            writer.stdin.flush()
            pi.wait_for(r"message from [^\n]*" + re.escape(marker), CHAT_TIMEOUT_S)
        finally:
            writer.terminate()
            writer.wait(60)

        pi.wait_for(re.escape(qemu_boot.CHECK_PREFIX) + "facts", CHAT_TIMEOUT_S)
        facts = pi.facts()
        pi.wait_for(re.escape(qemu_boot.POWER_DOWN), CHAT_TIMEOUT_S)
    finally:
        pi.stop()

    for path in ("/var/lib/hyperpi/feed.secret", "/var/lib/hyperpi/noise.secret"):
        assert facts[path] == {"mode": "0o600", "uid": 990, "gid": 990}, (path, facts[path])
    assert facts["secret_on_fat"] is False and facts["fat_bytes"] > 0
    assert len(facts["ssh_host_keys"]) >= 1
    assert facts["units"]["hyperpi-device"] == "active" and facts["units"]["ssh"] != "active"
    assert facts["units"]["hyperpi-growfs"] == "active"
    shipped_root = qemu_boot.boot_and_root(card)[1].size
    assert facts["root_size"] > shipped_root + (256 << 20), "the root fs grew to the (padded) card"
    assert facts["passwords"] == [] and facts["journal_storage"] is False

    # A second fresh copy of the same provisioned image makes its own SSH host keys.
    second = qemu_boot.Raspi3(card, _workdir(tmp_path, "boot2"), PORT, check=True)
    second.start()
    try:
        second.wait_for(re.escape(qemu_boot.CHECK_PREFIX) + "facts", BOOT_TIMEOUT_S)
        facts2 = second.facts()
    finally:
        second.stop()
    assert facts2["ssh_host_keys"] and not set(facts2["ssh_host_keys"]) & set(facts["ssh_host_keys"])

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"boot_to_ready_s": round(ready_s, 1), "image": built_image.name,
                                   "measured_at": int(time.time())}, indent=2) + "\n")


# The host side talks to the emulated Pi through the forwarded loopback port only: no mDNS.
LOOPBACK_ONLY = ["--listen", "127.0.0.1:0", "--no-mdns"]


def chat_write(store: Path, extra: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hyperpi_host.cli", "chat", "write", "--store", str(store),
                             "--nick", "host", *LOOPBACK_ONLY, *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path
