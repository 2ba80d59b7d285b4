"""LAN benchmark on the network-namespace test LAN (needs root, like tests/netns).

Measures the time from a peer's `Swarm.start()` to its first established connection with
a peer that is already running, found by mDNS alone (median of 10 starts, each a new peer
identity in namespace b joining the topic of a long-running peer in namespace a).
Target: under 1.5 s. Results go to tests/bench/results/lan.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
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
        "append_to_remote_ms": "not measured yet: needs the replicator on top of the swarm",
        "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"start to first connection (mDNS): median {median * 1000:.0f} ms over {STARTS} starts "
          f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}; target < {DISCOVERY_TARGET_S} s)")


if __name__ == "__main__":
    main()
