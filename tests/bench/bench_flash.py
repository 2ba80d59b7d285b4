"""Benchmark `hyperpi flash` against `bmaptool copy` and `dd bs=4M conv=fsync`, in one run.

A 1 GiB sparse image, about 40% mapped with random data (nothing compresses or dedups away),
with a bmap made both by `bmaptool create` and by hyperpi (they must agree). Each tool copies
it to a fresh file target, fsync included; hyperpi also reads everything back to verify, which
bmaptool and dd do not. Runs alternate between tools so background load hits them alike; the
median of REPEATS runs is reported. Writes tests/bench/results/flash.json.
Needs bmap-tools (tests/system-deps.sh installs it); installs nothing itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hyperpi_host.bmap import make_bmap, read_bmap

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "flash.json"
IMAGE_SIZE = 1 << 30
MAPPED_FRACTION = 0.40
REPEATS = 5
SEED = 10  # fixed layout (40.0% mapped), so runs on different days compare


def work_dir() -> Path:
    """A temporary directory on a real disk: /tmp may be RAM (tmpfs), which says nothing."""
    base = os.environ.get("HYPERPI_BENCH_DIR")
    if not base:
        tmp_fs = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "--target", tempfile.gettempdir()], capture_output=True, text=True
        ).stdout.strip()
        base = str(ROOT / "build") if tmp_fs in ("tmpfs", "ramfs", "") else tempfile.gettempdir()
    Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="bench-flash-", dir=base))


def make_image(path: Path) -> float:
    """Random-length extents of random data, each kept with probability MAPPED_FRACTION."""
    rng = random.Random(SEED)
    pos = mapped = 0
    with open(path, "wb") as f:
        while pos < IMAGE_SIZE:
            n = min(rng.randint(16, 4096) * 4096, IMAGE_SIZE - pos)
            if rng.random() < MAPPED_FRACTION:
                f.seek(pos)
                f.write(os.urandom(n))
                mapped += n
            pos += n
        f.truncate(IMAGE_SIZE)
    return mapped / IMAGE_SIZE


def timed(command: list[str], target: Path) -> float:
    if target.exists():
        target.unlink()
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    if shutil.which("bmaptool") is None:
        raise RuntimeError("bmaptool is missing: run tests/system-deps.sh (installs bmap-tools)")
    tmp = work_dir()
    try:
        image, target = tmp / "bench.img", tmp / "card.img"
        fraction = make_image(image)
        theirs, ours = tmp / "bmaptool.bmap", tmp / "hyperpi.bmap"
        started = time.perf_counter()
        subprocess.run(["bmaptool", "create", "-o", str(theirs), str(image)], check=True, capture_output=True)
        bmaptool_create = time.perf_counter() - started
        started = time.perf_counter()
        ours.write_text(make_bmap(image))
        hyperpi_create = time.perf_counter() - started
        agree = read_bmap(theirs).ranges == read_bmap(ours).ranges
        if not agree:
            raise RuntimeError("hyperpi's bmap and bmaptool's differ for the same image")

        hyperpi = [
            sys.executable,
            "-m",
            "hyperpi_host.cli",
            "flash",
            str(image),
            str(target),
            "--to-file",
            "--yes",
            "--bmap",
            str(ours),
        ]
        tools = {
            "hyperpi flash (with read-back verify)": hyperpi,
            "hyperpi flash --no-verify": hyperpi + ["--no-verify"],
            "bmaptool copy": ["bmaptool", "-q", "copy", "--bmap", str(theirs), str(image), str(target)],
            "dd bs=4M conv=fsync": ["dd", f"if={image}", f"of={target}", "bs=4M", "conv=fsync", "status=none"],
        }
        subprocess.run(["cat", str(image)], check=True, stdout=subprocess.DEVNULL)  # warm the cache alike
        times: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(REPEATS):
            for name, command in tools.items():
                times[name].append(timed(command, target))
        # Speed means nothing if the copy is wrong: flash once more and compare byte for byte.
        subprocess.run(hyperpi, check=True, capture_output=True)
        if subprocess.run(["cmp", "-s", str(image), str(target)]).returncode != 0:
            raise RuntimeError("hyperpi's copy differs from the image")

        median = {name: statistics.median(t) for name, t in times.items()}
        ours_s = median["hyperpi flash (with read-back verify)"]
        result = {
            "image_bytes": IMAGE_SIZE,
            "mapped_fraction": round(fraction, 3),
            "repeats": REPEATS,
            "bmaps_agree": agree,
            "bmap_create_seconds": {"hyperpi": round(hyperpi_create, 3), "bmaptool": round(bmaptool_create, 3)},
            "median_seconds": {name: round(s, 3) for name, s in median.items()},
            "all_seconds": {name: [round(s, 3) for s in t] for name, t in times.items()},
            "ratio_hyperpi_to_bmaptool": round(ours_s / median["bmaptool copy"], 3),
            "ratio_hyperpi_to_dd": round(ours_s / median["dd bs=4M conv=fsync"], 3),
            "ratio_hyperpi_no_verify_to_bmaptool": round(
                median["hyperpi flash --no-verify"] / median["bmaptool copy"], 3
            ),
        }
        print(
            f"1 GiB image, {fraction:.0%} mapped; bmaps agree: {agree}; "
            f"bmap create: hyperpi {hyperpi_create:.2f} s, bmaptool {bmaptool_create:.2f} s"
        )
        for name, s in median.items():
            print(f"  {name:40s} {s:6.2f} s (median of {REPEATS})")
        print(
            f"  hyperpi (writes + reads back) / bmaptool (writes only): {result['ratio_hyperpi_to_bmaptool']:.2f}x time"
        )
        print(f"  hyperpi / dd: {result['ratio_hyperpi_to_dd']:.2f}x time")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
