"""LAN benchmark on the network-namespace test LAN (needs root, like tests/netns).

- discovery: the time from a peer's `Swarm.start()` to its first established connection with
  a peer that is already running, found by mDNS alone (median of 10 starts, each a new peer
  identity in namespace b joining the topic of a long-running peer in namespace a).
  Target: under 1.5 s.
- append to remote: a writer in namespace a appends 200 chat messages one at a time (40 ms
  apart, so each travels alone, as typed messages do); a reader in namespace b, connected
  through the swarm and replicating live, notes when each block is committed to its store.
  Both read CLOCK_MONOTONIC, which namespaces share. p50 and p99. Target: p99 under 100 ms.
Results go to tests/bench/results/lan.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from tests.netns.conftest import NetnsLan

RESULTS = Path(__file__).resolve().parent / "results" / "lan.json"
STARTS = 10
DISCOVERY_TARGET_S = 1.5
TOPIC = "6c616e2062656e63686d61726b20746f706963206c616e2062656e63686d6172"  # 32 bytes

PEER = r"""
import asyncio, json, os, sys, time
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

async def main(topic, port, wait_for_peer):
    connected = asyncio.Event()
    connected_at = []
    async def on_connection(conn):
        connected_at.append(time.perf_counter())  # the handshake is complete here
        connected.set()
        async for _ in conn:
            pass
    swarm = Swarm(keypair(), port, name="bench", on_connection=on_connection)
    await swarm.join(bytes.fromhex(topic))  # before start: published from the first announcement
    started = time.perf_counter()
    await swarm.start()
    print(json.dumps({"event": "started"}), flush=True)
    if wait_for_peer:
        await asyncio.wait_for(connected.wait(), 30)
        print(json.dumps({"event": "connected", "seconds": connected_at[0] - started}), flush=True)
        await swarm.stop()
        return
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await swarm.stop()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"))
"""


WRITER = r"""
import asyncio, json, sys, tempfile, time
from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

async def main(count, gap):
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        core = Core.create(store)
        cores = CoreSet(store, [core])
        swarm = Swarm(keypair(), 49737, name="writer", on_connection=lambda conn: replicate(conn, cores))
        await swarm.join(core.discovery_key)
        await swarm.start()
        print(json.dumps({"event": "key", "key": core.key.hex()}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "go": the reader is connected
        for i in range(count):
            block = json.dumps({"type": "chat", "text": f"message {i}", "time": int(time.time() * 1000),
                                "nick": "bench"}).encode()
            appended = time.perf_counter()
            core.append([block])
            print(json.dumps({"event": "appended", "index": i, "t": appended}), flush=True)
            await asyncio.sleep(gap)
        await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
        await swarm.stop()

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""

READER = r"""
import asyncio, json, sys, tempfile, time
from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

async def main(key, count):
    done = asyncio.Event()
    connected = asyncio.Event()
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        core = Core.open(store, bytes.fromhex(key))
        stored = {}
        def on_event(event):
            if event.kind == "block" and event.index not in stored:
                stored[event.index] = time.perf_counter()  # called after the commit
                if len(stored) == count:
                    done.set()
        core.subscribe(on_event)
        cores = CoreSet(store, [core])
        async def on_connection(conn):
            connected.set()
            await replicate(conn, cores)
        swarm = Swarm(keypair(), 49737, name="reader", on_connection=on_connection)
        await swarm.join(core.discovery_key)
        await swarm.start()
        await asyncio.wait_for(connected.wait(), 30)
        await asyncio.sleep(0.5)  # let the first sync settle before the writer starts
        print(json.dumps({"event": "connected"}), flush=True)
        await asyncio.wait_for(done.wait(), 120)
        print(json.dumps({"event": "stored", "times": {str(i): t for i, t in stored.items()}}), flush=True)
        await swarm.stop()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""
MESSAGES = 200
GAP = 0.04  # s between appends: a fast typist, and no two blocks share one round trip
APPEND_P99_TARGET_MS = 100.0


def append_latencies(lan: NetnsLan) -> list[float]:
    writer = lan.python("a", "-c", WRITER, str(MESSAGES), str(GAP))
    assert writer.stdout is not None and writer.stdin is not None
    key = json.loads(writer.stdout.readline())["key"]
    reader = lan.python("b", "-c", READER, key, str(MESSAGES))
    assert reader.stdout is not None
    assert json.loads(reader.stdout.readline())["event"] == "connected"
    writer.stdin.write("go\n")
    writer.stdin.flush()
    appended = {}
    for _ in range(MESSAGES):
        event = json.loads(writer.stdout.readline())
        appended[event["index"]] = event["t"]
    stored = json.loads(reader.stdout.readline())["times"]
    reader.wait(timeout=30)
    writer.communicate("stop\n", timeout=30)
    return [(stored[str(i)] - appended[i]) * 1000 for i in range(MESSAGES)]


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def discovery_times(lan: NetnsLan) -> list[float]:
    existing = lan.python("a", "-c", PEER, TOPIC, "49737", "0")
    assert existing.stdout is not None
    assert json.loads(existing.stdout.readline())["event"] == "started"
    samples = []
    for _ in range(STARTS):
        newcomer = lan.python("b", "-c", PEER, TOPIC, "49737", "1")
        out, _ = newcomer.communicate(timeout=60)
        events = [json.loads(line) for line in out.splitlines()]
        samples.append(next(e["seconds"] for e in events if e["event"] == "connected"))
    existing.communicate("stop\n", timeout=30)
    return samples


def main() -> None:
    if os.geteuid() != 0:
        print("bench lan: skipped, needs root to create network namespaces")
        return
    lan = NetnsLan()
    try:
        lan.create()
        samples = discovery_times(lan)
        latencies = append_latencies(lan)
    finally:
        lan.destroy()
    median = statistics.median(samples)
    result = {
        "discovery_to_first_connection_s": {
            "median": round(median, 4),
            "min": round(min(samples), 4),
            "max": round(max(samples), 4),
            "samples": [round(s, 4) for s in samples],
            "target": DISCOVERY_TARGET_S,
            "met": median < DISCOVERY_TARGET_S,
        },
        "append_to_remote_ms": {
            "messages": MESSAGES,
            "gap_s": GAP,
            "p50": round(percentile(latencies, 50), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(max(latencies), 2),
            "target_p99": APPEND_P99_TARGET_MS,
            "met": percentile(latencies, 99) < APPEND_P99_TARGET_MS,
        },
        "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"start to first connection (mDNS): median {median * 1000:.0f} ms over {STARTS} starts "
        f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}; target < {DISCOVERY_TARGET_S} s)"
    )
    print(
        f"append to stored on the other device: p50 {percentile(latencies, 50):.1f} ms, "
        f"p99 {percentile(latencies, 99):.1f} ms over {MESSAGES} messages (target p99 < {APPEND_P99_TARGET_MS:g} ms)"
    )


if __name__ == "__main__":
    main()
