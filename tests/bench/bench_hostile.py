"""Hostile LAN benchmark on loopback: a chat writer under attack, and an honest reader.

A writer process (a feed, a `Swarm` replicating it, a chat message appended every 50 ms, its
open-file limit at 1,024) is attacked by this process in turn with: 200 silent connections,
200 post-handshake slowloris, 50 valid 16 MiB frames, 50 incomplete 16 MiB frames, 1,100
trickling connections, one 400,000-request batch, 50 peers that stop reading. An honest reader
process replicates the feed throughout. Per scenario: the writer's RSS before, at peak (sampled
every 20 ms) and 3 s after the attackers left, and the reader's live-message p99 (append to
stored, CLOCK_MONOTONIC is shared). Targets: peak RSS under 80 MB, after within 10 MB of the
baseline, live p99 under 1 s. Each scenario lasts ATTACK_S seconds. Results go to
tests/bench/results/hostile.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.bench.bench_device import rss_mb

RESULTS = Path(__file__).resolve().parent / "results" / "hostile.json"
ROOT = Path(__file__).resolve().parents[2]
ATTACK_S = 5.0
AFTER_S = 3.0
PEAK_TARGET_MB = 80.0
AFTER_TARGET_MB = 10.0
P99_TARGET_S = 1.0

WRITER = r"""
import asyncio, json, resource, sys, time
from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main(folder):
    store = Store(folder)
    core = Core.create(store)
    core.append([b"x" * 100] * 2000)  # something to ask for
    cores = CoreSet(store, [core])
    swarm = Swarm(keypair(), 0, host="127.0.0.1", mdns=False, on_connection=lambda c: replicate(c, cores))
    await swarm.start()
    print(json.dumps({"port": swarm.port, "key": core.key.hex()}), flush=True)
    while True:
        core.append([json.dumps({"type": "chat", "text": "live", "t": time.monotonic()}).encode()])
        await asyncio.sleep(0.05)

asyncio.run(main(sys.argv[1]))
"""

READER = r"""
import asyncio, json, sys, time
from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

async def main(folder, port, key):
    core = Core.open(Store(folder), bytes.fromhex(key))
    seen = 0
    def on_event(_event=None):
        nonlocal seen
        while seen < core.contiguous_length:
            block = core.get(seen)
            seen += 1
            value = json.loads(block) if block.startswith(b"{") else None
            if isinstance(value, dict) and "t" in value:
                print(json.dumps({"at": time.monotonic(), "lat": time.monotonic() - value["t"]}), flush=True)
    core.subscribe(on_event)
    swarm = Swarm(keypair(), 0, host="127.0.0.1", mdns=False, peers=[("127.0.0.1", port)],
                  on_connection=lambda c: replicate(c, CoreSet(core.store, [core])))
    await swarm.start()
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else float("nan")


# --- attackers (this process) -------------------------------------------------------------------

Attack = Callable[[int, bytes, list], Awaitable[None]]


async def _key_holder(port: int, key: bytes, folder: Path, rcvbuf: int | None = None):  # noqa: ANN202
    from hyperpi.hypercore import Core, Store
    from hyperpi.net import stream as ns
    from hyperpi.wire.noise import keypair
    from hyperpi.wire.replicator import Replicator
    from hyperpi.wire.secret_stream import SecretStream

    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    conn = ns.EncryptedConnection(reader, writer, SecretStream(True, keypair()), keepalive=None)
    await conn.handshake()
    assert conn.handshake_hash is not None
    rep = Replicator(True, conn.handshake_hash, cores=[Core.open(Store(folder), key)])
    while not rep.sharing:
        await conn.send_many(rep.frames_to_send())
        rep.receive_many(await conn.recv_many())
    rep.frames_to_send()
    return conn, rep


def _requests(rep, count: int) -> bytes:  # noqa: ANN001
    from hyperpi.hypercore.types import BlockRequest, ProofRequest
    from hyperpi.wire.messages import Request

    [peer] = rep._peers.values()
    with rep.mux.batch():
        for i in range(count):
            rep.mux.send(
                peer.channel, Request.TYPE, Request(i, ProofRequest(0, block=BlockRequest(i % 2000, 0))).encode()
            )
    [frame] = rep.mux.frames_to_send()
    return frame


async def _quietly(coro: Awaitable) -> object:
    try:
        return await coro
    except (OSError, ConnectionError, TimeoutError, Exception):  # noqa: BLE001 - attackers get dropped
        return None


async def silent(port: int, key: bytes, held: list) -> None:
    for _ in range(200):
        held.append(await _quietly(asyncio.open_connection("127.0.0.1", port)))


async def slowloris(port: int, key: bytes, held: list) -> None:
    from hyperpi.net import stream as ns
    from hyperpi.wire.noise import keypair

    conns = await asyncio.gather(
        *(_quietly(ns.open_connection("127.0.0.1", port, keypair(), keepalive=None)) for _ in range(200))
    )
    held += conns
    for _ in range(int(ATTACK_S)):
        for conn in conns:
            if conn is not None and not conn.closed:
                conn._writer.write(b"\x05")
        await asyncio.sleep(1)


async def trickle_1100(port: int, key: bytes, held: list) -> None:
    from hyperpi.net import stream as ns
    from hyperpi.wire.noise import keypair

    conns = []
    for _ in range(0, 1100, 100):
        conns += await asyncio.gather(
            *(_quietly(ns.open_connection("127.0.0.1", port, keypair(), keepalive=None)) for _ in range(100))
        )
    held += conns
    for _ in range(3):
        for conn in conns:
            if conn is not None and not conn.closed:
                conn._writer.write(b"\x05")
        await asyncio.sleep(1)


def _holders(count: int, **kwargs) -> Attack:  # noqa: ANN003
    async def attack(port: int, key: bytes, held: list) -> None:
        folder = Path(tempfile.mkdtemp())
        for i in range(count):
            held.append(await _quietly(_key_holder(port, key, folder / str(i), **kwargs)))

    return attack


async def valid_16mib(port: int, key: bytes, held: list) -> None:
    await _holders(50)(port, key, held)
    for item in held:
        if item is not None:
            conn, rep = item
            [peer] = rep._peers.values()
            rep.mux.send(peer.channel, 99, b"x" * (2**24 - 1 - 17 - 8))
            await _quietly(conn.send_many(rep.frames_to_send()))


async def incomplete_16mib(port: int, key: bytes, held: list) -> None:
    await _holders(50)(port, key, held)
    for item in held:
        if item is not None:
            item[0]._writer.write((2**24 - 1).to_bytes(3, "little") + b"x" * (1 << 20))
            await asyncio.sleep(0.01)


async def request_batch(port: int, key: bytes, held: list) -> None:
    await _holders(1)(port, key, held)
    conn, rep = held[0]
    await _quietly(conn.send_many([_requests(rep, 400_000)]))


async def non_readers(port: int, key: bytes, held: list) -> None:
    await _holders(50, rcvbuf=16 * 1024)(port, key, held)
    for item in held:
        if item is not None:
            await _quietly(item[0].send_many([_requests(item[1], 1000)]))


SCENARIOS: dict[str, Attack] = {
    "200 silent connections": silent,
    "200 post-handshake slowloris": slowloris,
    "50 valid 16 MiB frames": valid_16mib,
    "50 incomplete 16 MiB frames": incomplete_16mib,
    "1,100 trickling connections at a 1,024 fd limit": trickle_1100,
    "one 400,000-request batch": request_batch,
    "50 non-readers": non_readers,
}


def _close(held: list) -> None:
    for item in held:
        conn = item[0] if isinstance(item, tuple) else item
        if conn is None:
            continue
        close = getattr(conn, "close", None)
        if close is None and hasattr(item[1], "close"):  # (reader, writer) of a silent connection
            close = item[1].close
        if close is not None:
            close()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # the attackers need fds
    try:
        results = {name: _run_scenario(name, attack) for name, attack in SCENARIOS.items()}
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    result = {
        "scenarios": results,
        "targets": {"peak_mb": PEAK_TARGET_MB, "after_over_baseline_mb": AFTER_TARGET_MB, "live_p99_s": P99_TARGET_S},
        "met": all(r["met"] for r in results.values()),
        "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


def _run_scenario(name: str, attack: Attack) -> dict:
    """A fresh writer and honest reader for one scenario, so each starts from the same baseline."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "firmware"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, f"{tmp}/w"], stdout=subprocess.PIPE, text=True, env=env
        )
        assert writer.stdout is not None
        hello = json.loads(writer.stdout.readline())
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, f"{tmp}/r", str(hello["port"]), hello["key"]],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        latencies: list[tuple[float, float]] = []

        def collect() -> None:
            assert reader.stdout is not None
            for line in reader.stdout:
                item = json.loads(line)
                latencies.append((item["at"], item["lat"]))

        threading.Thread(target=collect, daemon=True).start()
        try:
            time.sleep(2)  # the reader catches up with the feed
            return asyncio.run(_scenario(name, attack, writer.pid, hello, latencies))
        finally:
            writer.terminate()
            reader.terminate()
            writer.wait(10)
            reader.wait(10)


async def _scenario(name: str, attack: Attack, pid: int, hello: dict, latencies: list[tuple[float, float]]) -> dict:
    baseline = rss_mb(pid)
    peak = baseline
    start = time.monotonic()
    held: list = []
    task = asyncio.create_task(attack(hello["port"], bytes.fromhex(hello["key"]), held))
    while time.monotonic() - start < ATTACK_S or not task.done():
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.02)
        if time.monotonic() - start > 4 * ATTACK_S:
            task.cancel()
            break
    await asyncio.gather(task, return_exceptions=True)
    _close(held)
    end = time.monotonic()
    await asyncio.sleep(AFTER_S)
    after = rss_mb(pid)
    window = [lat for at, lat in latencies if start <= at <= end + AFTER_S]
    p99 = percentile(window, 99)
    met = peak < PEAK_TARGET_MB and after - baseline < AFTER_TARGET_MB and p99 < P99_TARGET_S
    print(
        f"{name}: RSS {baseline:.0f} -> peak {peak:.0f} -> after {after:.0f} MB; "
        f"live p99 {p99 * 1000:.0f} ms over {len(window)} messages{'' if met else '  (target missed)'}",
        flush=True,
    )
    return {
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(peak, 1),
        "after_mb": round(after, 1),
        "live_p99_ms": round(p99 * 1000, 1),
        "live_messages": len(window),
        "attack_s": round(end - start, 1),
        "met": met,
    }


if __name__ == "__main__":
    main()
