"""`make demo` (`python -m hyperpi.demo`): two simulated devices on loopback chat and leave
their screens as PNGs. Runs the real service processes; nothing leaves this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_demo_sends_both_ways_and_writes_both_screens(tmp_path: Path) -> None:
    out = tmp_path / "screens"
    r = subprocess.run(
        [sys.executable, "-m", "hyperpi.demo", "--out", str(out)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kitchen button B -> 'Dinner is ready' on hallway's screen" in r.stdout
    assert "hallway button B -> 'On my way' on kitchen's screen" in r.stdout
    sizes = {}
    for name in ("kitchen", "hallway"):
        image = Image.open(out / f"{name}.png")
        assert image.convert("L").getextrema()[1] > 0  # something is drawn
        sizes[name] = image.size
    assert sizes == {"kitchen": (320, 240), "hallway": (128, 64)}  # Display HAT Mini, OLED Bonnet
