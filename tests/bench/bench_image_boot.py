"""Benchmark the image in QEMU 10: boot to the service's READY, and a button press to the host.

Needs `make image` (build/hyperpi-*-arm64.img), qemu-system-aarch64 10 (image/deps.sh) and root.
In one run, each on a fresh copy of one provisioned card (first boot: root grown, SSH keys made):
- raspi3b, Display HAT Mini settings: seconds from QEMU's start to `hyperpi-device: ready`;
- raspi3b, the same card with the service disabled: seconds to systemd's multi-user target;
  the ratio of the two is what the service adds to a boot;
- virt, `board = "qemu-virt-test"`: QMP `system_powerdown` pulses the emulated power button (a
  GPIO edge through the kernel, lgpio, gpiozero and the service); the time from the QMP command to
  the message arriving in a running `hyperpi chat view` on the host, PRESSES times.
Writes tests/bench/results/image_boot.json.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "image"))

import qemu_boot

RESULTS = Path(__file__).resolve().parent / "results" / "image_boot.json"
PORT = 49737
TIMEOUT_S = 1800
PRESSES = 5
PRESS_GAP_S = 3.0  # longer than a hold (1 s) plus the 100 ms pulse: each press counts once


def hyperpi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyperpi_host.cli", *args], text=True, capture_output=True, check=False
    )


def provision(image: Path, card: Path, name: str, board: str) -> str:
    done = hyperpi(
        "provision", str(image), "-o", str(card), "--device", name, "--board", board, "--listen-port", str(PORT)
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return json.loads((Path(os.environ["HYPERPI_HOME"]) / "devices" / f"{name}.json").read_text())["feed_key"]


def boot_time(card: Path, work: Path, pattern: str, **options: bool) -> float:
    work.mkdir()
    machine = qemu_boot.Machine(card, work, PORT, **options)
    machine.start()
    try:
        return machine.wait_for(pattern, TIMEOUT_S)
    finally:
        machine.stop()


def button_latencies(card: Path, work: Path, key: str) -> list[float]:
    work.mkdir()
    vm = qemu_boot.Machine(card, work, PORT, machine="virt")
    vm.start()
    viewer = None
    try:
        vm.wait_for(re.escape(qemu_boot.READY_LINE), TIMEOUT_S)
        viewer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hyperpi_host.cli",
                "chat",
                "view",
                key,
                "--store",
                str(work / "view"),
                "--peer",
                f"127.0.0.1:{vm.host_port}",
                "--listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert viewer.stdout is not None
        viewer.stdout.readline()  # the boot message: the viewer is connected and caught up
        latencies = []
        for _ in range(PRESSES):
            time.sleep(PRESS_GAP_S)
            pressed = time.monotonic()
            vm.qmp("system_powerdown")
            line = viewer.stdout.readline()
            if not line:
                raise RuntimeError("the viewer stopped before the press arrived")
            latencies.append(time.monotonic() - pressed)
        return latencies
    finally:
        if viewer is not None:
            viewer.kill()
        vm.stop()


def main() -> None:
    images = sorted((ROOT / "build").glob("hyperpi-*-arm64.img"))
    if not images:
        raise RuntimeError("no build/hyperpi-*-arm64.img: run `make image` first")
    if os.geteuid() != 0:
        raise RuntimeError("needs root, as `make image` does")
    with tempfile.TemporaryDirectory(prefix="bench-image-", dir=ROOT / "build") as tmp:
        work = Path(tmp)
        os.environ["HYPERPI_HOME"] = str(work / "home")
        card, virt_card = work / "card.img", work / "virt.img"
        provision(images[-1], card, "bench-pi", "display-hat-mini")
        key = provision(images[-1], virt_card, "bench-virt", "qemu-virt-test")
        ready = boot_time(card, work / "ready", re.escape(qemu_boot.READY_LINE))
        print(f"raspi3b first boot to the service's READY: {ready:.1f} s", flush=True)
        baseline = boot_time(card, work / "baseline", re.escape(qemu_boot.MULTI_USER), service=False)
        print(f"raspi3b first boot, service disabled, to multi-user.target: {baseline:.1f} s", flush=True)
        latencies = button_latencies(virt_card, work / "virt", key)
    ratio = ready / baseline
    print(f"READY / multi-user without the service: {ratio:.2f}x")
    print(
        f"button press to the host's viewer (virt, {PRESSES} presses): "
        f"median {statistics.median(latencies) * 1000:.0f} ms,"
        f" max {max(latencies) * 1000:.0f} ms"
    )
    RESULTS.write_text(
        json.dumps(
            {
                "image": images[-1].name,
                "raspi3b_boot_to_ready_s": round(ready, 1),
                "raspi3b_boot_to_multi_user_without_service_s": round(baseline, 1),
                "ready_over_baseline": round(ratio, 2),
                "virt_button_to_host_ms": [round(x * 1000) for x in latencies],
                "virt_button_to_host_median_ms": round(statistics.median(latencies) * 1000),
                "measured_at": int(time.time()),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
