"""Device benchmark: start-to-ready time and memory of the `hyperpi-device` service.

- start: spawn `hyperpi-device --simulate` (Display HAT Mini profile: the largest frames and the
  TrueType fonts) with a notify socket; time from spawn to READY=1, and RSS once the chat screen
  is drawn; once more with the OLED Bonnet profile (bitmap font, no FreeType).
- stored: the same with 10,000 messages already in its feeds (5,000 own, 5,000 from a followed
  feed): RSS after it has read them and drawn its screen.
- live: the service object in a child process receiving 10,000 messages (appends through the
  send path, redrawing every 10), RSS before and after.
Target: RSS under 40 MB. Results go to tests/bench/results/device.json.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "device.json"
MESSAGES = 10_000
RUNS = 5
# The network part runs too, on loopback without mDNS: a benchmark sends nothing off this machine.
LOOPBACK = 'listen_host = "127.0.0.1"\nlisten_port = 0\nmdns = false\n'


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def populate(state: Path, n: int) -> None:
    """Put n/2 own messages and n/2 from a followed feed into a fresh state directory."""
    from hyperpi.device.main import load_secret
    from hyperpi.device.service import chat_block
    from hyperpi.hypercore import Core, Store, generate_keypair

    state.mkdir(parents=True, exist_ok=True)
    own_keys = load_secret(state / "feed.secret")
    friend = generate_keypair(bytes([9]) * 32)
    with Store(state / "store") as store:
        own = Core.create(store, own_keys)
        other = Core.create(store, friend)  # held writable here only to fill it quickly
        now = time.time()
        for core, nick in ((own, "kitchen"), (other, "ana")):
            for start in range(0, n // 2, 1000):
                core.append([chat_block(f"message {i}", nick, now - n + i) for i in range(start, start + 1000)])
    (state / "friend.key").write_text(other.key.hex())


def start_service(config: Path, state: Path) -> tuple[float, float]:
    """(seconds from spawn to READY=1, RSS in MB a moment after) of one service start."""
    with tempfile.TemporaryDirectory() as tmp:
        sock_path = Path(tmp) / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(sock_path))
            sock.settimeout(60)
            env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hyperpi.device.main",
                    "--config",
                    str(config),
                    "--state-dir",
                    str(state),
                    "--simulate",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=env,
            )
            try:
                while sock.recv(64) != b"READY=1":
                    pass
                ready = time.perf_counter() - t0
                time.sleep(2.5)  # past the splash: the chat screen is drawn
                rss = rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    return ready, rss


LIVE = r"""
from hyperpi.device import without_openssl
without_openssl()  # as the service process does before its imports
import json, sys, time, tempfile
from pathlib import Path
from hyperpi.device.boards import get_board
from hyperpi.device.config import DeviceConfig
from hyperpi.device.display import Display, open_device
from hyperpi.device.service import DeviceService
from hyperpi.hypercore import Core, Store

def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024

n = int(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
    store.db.execute('PRAGMA cache_size=-512')  # as hyperpi.device.main sets it
    config = DeviceConfig(name='kitchen', board='display-hat-mini')
    display = Display(open_device(get_board('display-hat-mini'), dummy=True), min_interval=0)
    service = DeviceService(config, store, Core.create(store), display=display)
    service.app.mode = 'chat'
    service.redraw()
    before = rss()
    t0 = time.perf_counter()
    for i in range(n):
        service.append_chat(f'message {i}')
        if i % 10 == 0:
            service.redraw()
    elapsed = time.perf_counter() - t0
    print(json.dumps({'rss_before_mb': before, 'rss_after_mb': rss(), 'seconds': elapsed}))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        config = tmp_path / "device.toml"
        config.write_text('name = "kitchen"\nboard = "display-hat-mini"\n' + LOOPBACK)
        empty = [start_service(config, tmp_path / f"empty{i}") for i in range(RUNS)]
        oled_config = tmp_path / "oled.toml"
        oled_config.write_text('name = "kitchen"\nboard = "oled-bonnet"\n' + LOOPBACK)
        oled = start_service(oled_config, tmp_path / "oled")

        state = tmp_path / "full"
        populate(state, MESSAGES)
        friend = (state / "friend.key").read_text()
        config.write_text(
            f'name = "kitchen"\nboard = "display-hat-mini"\n{LOOPBACK}[[follow]]\nname = "Ana"\nkey = "{friend}"\n'
        )
        stored = start_service(config, state)

    out = subprocess.run([sys.executable, "-c", LIVE, str(MESSAGES)], capture_output=True, text=True, check=True)
    live = json.loads(out.stdout.strip().splitlines()[-1])

    ready = sorted(r for r, _ in empty)
    result = {
        "start_to_ready_ms_median": round(statistics.median(ready) * 1000, 1),
        "start_to_ready_ms_max": round(ready[-1] * 1000, 1),
        "rss_after_start_mb": round(statistics.median(r for _, r in empty), 1),
        "rss_after_start_oled_bonnet_mb": round(oled[1], 1),
        "rss_with_10000_stored_messages_mb": round(stored[1], 1),
        "rss_before_10000_live_messages_mb": round(live["rss_before_mb"], 1),
        "rss_after_10000_live_messages_mb": round(live["rss_after_mb"], 1),
        "live_10000_messages_seconds": round(live["seconds"], 2),
        "target_rss_mb": 40,
        "runs": RUNS,
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
