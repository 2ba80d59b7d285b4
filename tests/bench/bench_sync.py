"""Sync 100,000 small chat blocks over loopback TCP: Node->Node, Node->Python, Python->Node
and Python->Python, all in one run, so the ratios compare like with like.

Each pair is a writer process serving a pre-filled feed and a reader process that downloads
all of it; the reader reports seconds from dialling to the last block stored. The writers'
feeds are filled before timing starts. Results: tests/bench/results/sync.json.
Targets: Python->Python at least 2x Node->Node; Python->Node at least 1.2x Node->Node.

CPU seconds per 1,000 blocks are measured for each side: the writer's from its
/proc/<pid>/stat (user + system, all threads) just before the reader starts and just after
it ends, so the fill is not counted; the reader's from os.wait4 on the whole process (its
start-up included). They do not depend on how busy the machine is, as wall-clock ratios do.
A Node reader also reports its RocksDB operations per block: they are the same whichever
writer serves it, and they are most of its CPU, which bounds Python->Node (see the README).

    HYPERPI_BENCH_SYNC_BLOCKS=20000 HYPERPI_BENCH_SYNC_ROUNDS=1 \
    HYPERPI_BENCH_SYNC_PAIRS=python-python python -m tests.bench sync   # a quick look
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "tests" / "interop" / "node"
RESULTS = ROOT / "tests" / "bench" / "results" / "sync.json"


def _count_setting(name: str, default: int) -> int:
    """A positive whole number from the environment; a wrong one stops the bench in one line."""
    text = os.environ.get(name, str(default))
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # isdigit alone takes '²'
        raise SystemExit(f"{name}={text!r}: expected a whole number of at least 1")
    return int(text)


BLOCKS = _count_setting("HYPERPI_BENCH_SYNC_BLOCKS", 100_000)
ROUNDS = _count_setting("HYPERPI_BENCH_SYNC_ROUNDS", 3)
PAIRS = [("node", "node"), ("node", "python"), ("python", "node"), ("python", "python")]
# A subset for a quick look, e.g. "python-python,node-node" (ratios need node-node).
ONLY = os.environ.get("HYPERPI_BENCH_SYNC_PAIRS", "")
TARGETS = {"python->python": 2.0, "python->node": 1.2}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def writer_command(side: str, store: Path, port: int) -> list[str]:
    if side == "node":
        return ["node", "bench-sync.js", "serve", str(store), str(BLOCKS), "--listen", f"127.0.0.1:{port}"]
    return [sys.executable, "-m", "tests.bench.sync_peer", "serve", str(store), str(BLOCKS), str(port)]


def reader_command(side: str, key: str, store: Path, port: int) -> list[str]:
    if side == "node":
        return ["node", "bench-sync.js", "fetch", key, str(store), "--connect", f"127.0.0.1:{port}"]
    return [sys.executable, "-m", "tests.bench.sync_peer", "fetch", key, str(store), str(port)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15


def run_pair(writer: str, reader: str, work: Path) -> tuple[float, float, float, dict | None]:
    """(seconds, writer CPU seconds, reader CPU seconds, a Node reader's storage counts) of one sync."""
    port = free_port()
    cwd = {"node": NODE, "python": ROOT}
    server = subprocess.Popen(
        writer_command(writer, work / f"w-{writer}", port),
        cwd=cwd[writer],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()  # printed once the feed is filled and served
        key = json.loads(line)["key"]
        store = work / f"r-{writer}-{reader}-{time.monotonic_ns()}"
        writer_before = cpu_seconds(server.pid)
        with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
            client = subprocess.Popen(
                reader_command(reader, key, store, port), cwd=cwd[reader], stdout=stdout, stderr=stderr, text=True
            )
            timer = threading.Timer(600, client.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(client.pid, 0)  # reaps it, with its resource usage
            finally:
                timer.cancel()
            client.returncode = os.waitstatus_to_exitcode(status)
            writer_cpu = cpu_seconds(server.pid) - writer_before
            reader_cpu = usage.ru_utime + usage.ru_stime
            stdout.seek(0)
            stderr.seek(0)
            out, err = stdout.read(), stderr.read()
        if client.returncode != 0:
            raise RuntimeError(f"{writer}->{reader} reader failed (exit {client.returncode}): {err.strip()[-300:]}")
        result = json.loads(out.strip().splitlines()[-1])
        if result["blocks"] != BLOCKS:
            raise RuntimeError(f"{writer}->{reader} got {result['blocks']} blocks, not {BLOCKS}")
        shutil.rmtree(store, ignore_errors=True)
        return float(result["seconds"]), writer_cpu, reader_cpu, result.get("storage")
    finally:
        server.kill()
        server.wait()


def per_thousand(cpu: float) -> float:
    return 1000 * cpu / BLOCKS


def main() -> None:
    pairs = [p for p in PAIRS if not ONLY or f"{p[0]}-{p[1]}" in ONLY.split(",")]
    if not pairs:
        names = ",".join(f"{w}-{r}" for w, r in PAIRS)
        raise SystemExit(f"HYPERPI_BENCH_SYNC_PAIRS={ONLY!r}: no such pair; pairs: {names}")
    best: dict[str, float] = {}
    runs: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, float]] = {}  # best (lowest) CPU s per 1,000 blocks of each side
    cpu_runs: dict[str, list[list[float]]] = {}
    storage: dict[str, dict[str, float]] = {}  # a Node reader's RocksDB operations per block
    with tempfile.TemporaryDirectory(dir=ROOT / "tests" / "bench") as tmp:
        work = Path(tmp)
        for _ in range(ROUNDS):  # rounds alternate the pairs so machine load hits all alike
            for writer, reader in pairs:
                name = f"{writer}->{reader}"
                seconds, writer_cpu, reader_cpu, counts = run_pair(writer, reader, work)
                if counts:
                    storage[name] = {op: round(n / BLOCKS, 2) for op, n in counts.items()}
                w, r = per_thousand(writer_cpu), per_thousand(reader_cpu)
                runs.setdefault(name, []).append(seconds)
                cpu_runs.setdefault(name, []).append([round(w, 4), round(r, 4)])
                best[name] = min(best.get(name, seconds), seconds)
                prev = cpu.get(name, {"writer": w, "reader": r})
                cpu[name] = {"writer": min(prev["writer"], w), "reader": min(prev["reader"], r)}
                print(
                    f"{name:16s} {BLOCKS / seconds:10,.0f} blocks/s  ({seconds:.2f} s)"
                    f"  CPU s/1000 blocks: writer {w:.3f}, reader {r:.3f}",
                    flush=True,
                )
    rates = {name: BLOCKS / s for name, s in best.items()}
    base = rates.get("node->node")
    ratios = {name: rate / base for name, rate in rates.items()} if base else {}
    print(f"best of {ROUNDS}: blocks/s, ratio to node->node, CPU s per 1,000 blocks (writer, reader):")
    for name, rate in rates.items():
        ratio = f"x{ratios[name]:.2f}" if ratios else "  -  "
        side = cpu[name]
        print(
            f"  {name:16s} {rate:10,.0f} blocks/s  {ratio}   writer {side['writer']:.3f}  reader {side['reader']:.3f}"
        )
    for name, ops in storage.items():
        counts = ", ".join(f"{op} {n}" for op, n in ops.items())
        print(f"  {name:16s} Node reader's RocksDB operations per block: {counts}")
    for name, target in TARGETS.items():
        if name in ratios:
            verdict = "met" if ratios[name] >= target else "NOT met"
            print(f"  target {name} >= {target}x node->node: {verdict}")
    if ONLY or BLOCKS != 100_000:
        print(f"(not written to {RESULTS.relative_to(ROOT)}: a subset or another block count)")
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "blocks": BLOCKS,
                "rounds": ROUNDS,
                "blocks_per_second": rates,
                "ratio_to_node_node": ratios,
                "cpu_seconds_per_1000_blocks": cpu,
                "seconds_each_run": runs,
                "cpu_seconds_per_1000_blocks_each_run": cpu_runs,
                "node_reader_rocksdb_operations_per_block": storage,
                "cpu_measured_as": "writer: /proc/<pid>/stat utime+stime from reader start to reader exit;"
                " reader: os.wait4 rusage of the whole process",
                "targets": {name: f">= {target}" for name, target in TARGETS.items()},
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
