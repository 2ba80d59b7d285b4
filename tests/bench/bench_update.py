"""Update benchmark: time from `hyperpi release publish` to every device running the new
version, over the network-namespace LAN (needs root, like tests/netns), for a 1 MB and a 20 MB
bundle.

Two `hyperpi-device --simulate --lan` processes (namespaces a and b) run under the stand-in for
systemd of tests/netns/test_updates.py (restart on exit, READY on NOTIFY_SOCKET); the owner's
host in c publishes a wheel of this checkout with a bumped version plus a padding wheel of random
bytes (`--wheel`), so the bundle has the size under test and compresses no smaller. The clock
runs from starting `publish` to the last device's READY on the new version; the devices' logs
split it at `installed` (fetched, checked and installed with pip) and the restart to READY. There is no Node
counterpart to measure against: Node's hypercore has no update mechanism. Each size runs once
on fresh devices. Results go to tests/bench/results/update.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.netns.conftest import ROOT, NetnsLan, _remove_leftovers
from tests.netns.test_updates import Supervised, make_device, pad_wheel
from tests.release_wheels import build_wheel

RESULTS = Path(__file__).resolve().parent / "results" / "update.json"
SIZES_MB = (1, 20)
STEP = 600.0  # s: a 20 MB install on a loaded 2-core machine


class TimedLines(list[str]):
    """A device's log lines with the moment each arrived (the supervisor appends them)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines)
        self.times = [time.monotonic()] * len(lines)

    def append(self, line: str) -> None:
        super().append(line)
        self.times.append(time.monotonic())


def timed(device: Supervised) -> Supervised:
    with device.changed:  # the supervisor appends under this lock
        device.lines = TimedLines(device.lines)
    return device


def _stamp(device: Supervised, *needles: str, since: int = 0) -> tuple[int, float]:
    """The index of the first line with `needles` and when it arrived."""
    at = device.wait_for(*needles, since=since, timeout=STEP)
    lines = device.lines
    assert isinstance(lines, TimedLines)
    return at, lines.times[at]


def one_size(lan: NetnsLan, tmp: Path, size_mb: int) -> dict[str, float]:
    home = tmp / "home"
    env = dict(os.environ, HYPERPI_HOME=str(home))
    subprocess.run(
        [sys.executable, "-m", "hyperpi_host.cli", "keys", "new", "--owner", "ana"], env=env, check=True, cwd=ROOT
    )
    os.environ["HYPERPI_HOME"] = str(home)  # keys.load_identity reads it
    from hyperpi_host import keys

    control = keys.load_identity("ana").control_feed_key
    assert control is not None
    wheel = build_wheel(tmp / "w", "0.2.0")
    pad = pad_wheel(tmp, size_mb * 1_000_000 - wheel.stat().st_size)
    bundle_bytes = wheel.stat().st_size + pad.stat().st_size
    devices = [
        timed(Supervised(lan, ns, tmp / name, make_device(home, tmp, name, control), tmp))
        for ns, name in (("a", "kitchen"), ("b", "hallway"))
    ]
    try:
        for device in devices:
            device.wait_for("ready in", "(hyperpi 0.1.0)", timeout=STEP)
        marks = [len(device.lines) for device in devices]
        started = time.monotonic()
        publisher = lan.popen(
            "c", sys.executable, "-m", "hyperpi_host.cli", "release", "publish", str(wheel), "--wheel", str(pad),
            "--owner", "ana", "--timeout", str(STEP), env=env, cwd=str(ROOT), stderr=subprocess.STDOUT,
        )  # fmt: skip
        downloaded, running = [], []
        for device, mark in zip(devices, marks, strict=True):
            at, t = _stamp(device, "update 0.2.0: installed", since=mark)
            downloaded.append(t - started)
            at, t = _stamp(device, "ready in", "(hyperpi 0.2.0)", since=at)
            running.append(t - started)
        out, _ = publisher.communicate(timeout=STEP)
        if publisher.returncode != 0:
            raise RuntimeError(f"release publish failed: {out}")
    finally:
        for device in devices:
            device.stop()
    return {
        "bundle_bytes": bundle_bytes,
        "seconds_to_all_running": round(max(running), 2),
        "seconds_to_all_installed": round(max(downloaded), 2),
        "seconds_restart_to_ready": round(max(running) - max(downloaded), 2),
    }


def main() -> None:
    if os.geteuid() != 0:
        print("bench update: skipped, needs root for network namespaces")
        return
    results: dict[str, dict[str, float]] = {}
    for size in SIZES_MB:
        _remove_leftovers()
        lan = NetnsLan(("a", "b", "c"))
        try:
            lan.create()
            with tempfile.TemporaryDirectory() as tmp:
                results[f"{size} MB"] = one_size(lan, Path(tmp), size)
        finally:
            lan.destroy()
        r = results[f"{size} MB"]
        print(
            f"{size} MB bundle ({r['bundle_bytes']:,} bytes): both devices running it {r['seconds_to_all_running']} s "
            f"after publish started (installed at {r['seconds_to_all_installed']} s)",
            flush=True,
        )
    RESULTS.parent.mkdir(exist_ok=True)
    payload = {
        "bundles": results,
        "devices": 2,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
