"""Device LAN benchmark: two `hyperpi-device` processes on the network-namespace test LAN
(needs root, like tests/netns), finding each other with mDNS.

- latency: a press of "send" on the headless kitchen (a key on its `--simulate` stdin drives a
  gpiozero mock pin: the 50 ms press and the 20 ms debounce are included) until the hallway
  (simulated 128x64 OLED) has drawn the message; p50/p99 of PRESSES presses.
- memory: RSS of both services after start with the network on (connected, chat screen drawn),
  and after the hallway replicated a feed of 10,000 messages from the kitchen (how long that
  took, too). Target: RSS under 40 MB.
Results go to tests/bench/results/device_lan.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.bench.bench_device import rss_mb
from tests.netns.conftest import NetnsLan, _remove_leftovers
from tests.netns.test_device_e2e import (
    LoggedProcess,
    feed_key,
    press_and_see,
    start_device,
)

RESULTS = Path(__file__).resolve().parent / "results" / "device_lan.json"
PRESSES = 200
MESSAGES = 10_000
PAUSE = 0.25  # between presses: a person does not press faster, and frames are rate-limited


def configs(tmp: Path) -> None:
    kitchen_key = feed_key(tmp / "kitchen")
    feed_key(tmp / "hallway")
    (tmp / "kitchen.toml").write_text(
        f'name = "kitchen"\nboard = "headless"\nstate_dir = "{tmp / "kitchen"}"\npresets = ["Hi"]\n'
    )
    (tmp / "hallway.toml").write_text(
        f'name = "hallway"\nboard = "oled-bonnet"\nstate_dir = "{tmp / "hallway"}"\n'
        f'[[follow]]\nname = "kitchen"\nkey = "{kitchen_key.hex()}"\n'
    )


def populate(state: Path, n: int) -> None:
    """n chat messages in the kitchen's own feed, written before it starts."""
    from hyperpi.device.main import FEED_SECRET, load_secret
    from hyperpi.device.service import chat_block
    from hyperpi.hypercore import Core, Store

    with Store(state / "store") as store:
        own = Core.create(store, load_secret(state / FEED_SECRET))
        now = time.time()
        for start in range(0, n, 1000):
            own.append([chat_block(f"message {i}", "kitchen", now - n + i) for i in range(start, start + 1000)])


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def stop(*devices: LoggedProcess) -> None:
    for device in devices:
        assert device.terminate() == 0, f"{device.name} did not stop cleanly"


def latency_and_start(lan: NetnsLan, tmp: Path) -> dict[str, float]:
    configs(tmp)
    frames = tmp / "hallway-frames"
    kitchen = start_device(lan, "a", tmp / "kitchen.toml")
    spawned = time.monotonic()
    hallway_process = lan.python(
        "b", "-m", "hyperpi.device.main", "--config", str(tmp / "hallway.toml"), "--simulate",
        "--frames", str(frames), stderr=subprocess.STDOUT,
    )  # fmt: skip
    hallway = LoggedProcess(hallway_process, "b")
    ready_at, ready_line = hallway.wait_for("ready in")
    found_at, _ = hallway.wait_for("message from kitchen: kitchen is online")
    hallway.wait_for("frame saved")
    time.sleep(3)  # past the splash; connections settled
    result = {
        "hallway_spawn_to_ready_ms": round((ready_at - spawned) * 1000, 1),
        "hallway_ready_ms_self_reported": float(ready_line.rsplit("ready in ", 1)[1].split()[0]),
        "hallway_spawn_to_first_remote_message_ms": round((found_at - spawned) * 1000, 1),
        "rss_after_start_network_on_headless_mb": round(rss_mb(kitchen.process.pid), 1),
        "rss_after_start_network_on_oled_mb": round(rss_mb(hallway.process.pid), 1),
    }
    samples = []
    for _ in range(PRESSES):
        samples.append(press_and_see(kitchen, hallway, frames, "Hi"))
        time.sleep(PAUSE)
    result.update(
        {
            "button_to_remote_screen_ms_p50": round(percentile(samples, 50) * 1000, 1),
            "button_to_remote_screen_ms_p99": round(percentile(samples, 99) * 1000, 1),
            "button_to_remote_screen_ms_mean": round(statistics.mean(samples) * 1000, 1),
            "presses": PRESSES,
            "rss_after_presses_oled_mb": round(rss_mb(hallway.process.pid), 1),
        }
    )
    stop(kitchen, hallway)
    return result


def ten_thousand(lan: NetnsLan, tmp: Path) -> dict[str, float]:
    configs(tmp)
    populate(tmp / "kitchen", MESSAGES)
    kitchen = start_device(lan, "a", tmp / "kitchen.toml")
    hallway = start_device(lan, "b", tmp / "hallway.toml", "--frames", str(tmp / "frames"))
    started = time.monotonic()
    hallway.wait_for("connected to")
    done, _ = hallway.wait_for(f"message from kitchen: message {MESSAGES - 1}", timeout=300)
    time.sleep(3)  # the screen redrawn, replication idle
    result = {
        "sync_10000_messages_s": round(done - started, 2),
        "rss_after_10000_replicated_messages_oled_mb": round(rss_mb(hallway.process.pid), 1),
        "rss_serving_10000_messages_headless_mb": round(rss_mb(kitchen.process.pid), 1),
    }
    stop(kitchen, hallway)
    return result


def main() -> None:
    if os.geteuid() != 0:
        print("bench device_lan: skipped, needs root for network namespaces")
        return
    result: dict[str, float] = {}
    for phase in (latency_and_start, ten_thousand):
        _remove_leftovers()
        lan = NetnsLan(("a", "b"))
        try:
            lan.create()
            with tempfile.TemporaryDirectory() as tmp:
                result.update(phase(lan, Path(tmp)))
        finally:
            lan.destroy()
    result["target_rss_mb"] = 40
    for k, v in result.items():
        print(f"{k}: {v}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
