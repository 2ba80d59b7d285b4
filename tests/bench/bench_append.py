"""Append benchmark: 100,000 small JSON chat messages in batches of 1,000, hyperpi vs Node
hypercore 11 in the same run. Target: hyperpi at least as fast as Node.

Both sides get the same messages as bytes, start from an empty store in a temp dir, and
are timed over the appends only (each batch = one signed, committed append).

The cost of durability: the store fsyncs every commit (synchronous=FULL, see
hypercore/storage.py). The same run measures hyperpi with SQLite's NORMAL (no fsync per
commit) for comparison, in batches of 1,000 and as single appends (a button press is one).
Results go to tests/bench/results/append.json.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from hyperpi.hypercore import Core, Store

ROOT = Path(__file__).resolve().parents[2]
NODE_PEERS = ROOT / "tests" / "interop" / "node"
RESULTS = Path(__file__).resolve().parent / "results" / "append.json"
TOTAL = 100_000
BATCH = 1_000
ROUNDS = 3
SINGLE_TOTAL = 2_000  # single appends: one fsync each


def messages(n: int) -> list[bytes]:
    # The same JSON text bench-append.js makes (compact separators as JSON.stringify).
    return [
        json.dumps(
            {"type": "chat", "text": f"message number {i}", "time": 1_700_000_000_000 + i, "nick": "bench"},
            separators=(",", ":"),
        ).encode()
        for i in range(n)
    ]


def run_hyperpi(total: int = TOTAL, batch: int = BATCH, synchronous: str = "FULL") -> dict:
    data = messages(total)
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        store.db.execute(f"PRAGMA synchronous={synchronous}")  # FULL is the store's own setting
        core = Core.create(store)
        started = time.perf_counter()
        for i in range(0, total, batch):
            core.append(data[i : i + batch])
        seconds = time.perf_counter() - started
        assert core.length == total
        db_bytes = sum(p.stat().st_size for p in Path(tmp).glob("cores.db*"))
    return {"blocks": total, "seconds": seconds, "rate": total / seconds, "db_bytes": db_bytes}


def run_node(total: int = TOTAL, batch: int = BATCH) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["node", "bench-append.js", str(Path(tmp) / "core"), str(total), str(batch)],
            cwd=NODE_PEERS,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    # Alternate the two sides and keep each one's best run: the machine is shared, and the
    # best of a few runs is the least disturbed measurement of each.
    nodes, ours_runs = [], []
    for _ in range(ROUNDS):
        nodes.append(run_node())
        ours_runs.append(run_hyperpi())
    node = max(nodes, key=lambda r: r["rate"])
    ours = max(ours_runs, key=lambda r: r["rate"])
    durability = {}
    for synchronous in ("FULL", "NORMAL"):
        for total, batch in ((TOTAL, BATCH), (SINGLE_TOTAL, 1)):
            best = max((run_hyperpi(total, batch, synchronous) for _ in range(ROUNDS)), key=lambda r: r["rate"])
            durability[f"{synchronous} batch {batch}"] = best["rate"]
    ratio = ours["rate"] / node["rate"]
    result = {
        "total_blocks": TOTAL,
        "batch": BATCH,
        "rounds": ROUNDS,
        "hyperpi": ours,
        "node": node,
        "ratio_hyperpi_over_node": ratio,
        "all_rates": {"hyperpi": [r["rate"] for r in ours_runs], "node": [r["rate"] for r in nodes]},
        "target": "ratio >= 1",
        "durability_rates": durability,
    }
    print(f"hyperpi: {ours['rate']:,.0f} blocks/s ({ours['seconds']:.2f} s, best of {ROUNDS})")
    print(f"node:    {node['rate']:,.0f} blocks/s ({node['seconds']:.2f} s, best of {ROUNDS})")
    print(f"ratio hyperpi/node: {ratio:.2f} (target >= 1)")
    for name, rate in durability.items():
        print(f"hyperpi synchronous={name}: {rate:,.0f} blocks/s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
