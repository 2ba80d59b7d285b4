"""Transport benchmark: 100,000 small messages through secret-stream over loopback TCP,
Node->Node, Node->Python, Python->Node and Python->Python in one run.

This isolates the encrypted transport under the replicator (Noise handshake excluded;
framing, secretstream encryption, socket I/O, decryption), so a slow sync can be traced to
the transport or to the layers above. Messages are 150 bytes, about one chat block's `data`
message. The Python sender hands messages to `send_many` in groups of 100 (as a replicator
answering pipelined requests would); Node's sender writes each one, honouring backpressure.
Rates are measured by the receiver, first message to last.
Results go to tests/bench/results/wire.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from hyperpi.net import stream as ns
from hyperpi.wire.noise import keypair

ROOT = Path(__file__).resolve().parents[2]
NODE_PEERS = ROOT / "tests" / "interop" / "node"
RESULTS = Path(__file__).resolve().parent / "results" / "wire.json"
COUNT = 100_000
SIZE = 150
GROUP = 100


async def _node(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "node", "secret-stream-bench.js", *args, cwd=NODE_PEERS, stdout=asyncio.subprocess.PIPE
    )


async def _line(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdout is not None
    return json.loads(await asyncio.wait_for(proc.stdout.readline(), 300))


async def _python_receiver(count: int) -> tuple[asyncio.Server, int, asyncio.Future]:
    result: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(conn: ns.EncryptedConnection) -> None:
        n, started = 0, 0.0
        async for _ in conn:
            if n == 0:
                started = time.perf_counter()
            n += 1
            if n == count:
                result.set_result(time.perf_counter() - started)
                return

    server = await ns.serve("127.0.0.1", 0, keypair(), handler)
    return server, server.sockets[0].getsockname()[1], result


async def _python_send(port: int, count: int) -> None:
    conn = await ns.open_connection("127.0.0.1", port, keypair())
    payload = bytes([7]) * SIZE
    for _ in range(0, count, GROUP):
        await conn.send_many([payload] * GROUP)
    await asyncio.sleep(0.5)  # let the receiver finish before closing
    conn.close()


async def run(sender: str, receiver: str, count: int = COUNT) -> float:
    """Seconds the receiver took, first message to last."""
    if receiver == "node":
        recv = await _node("recv", str(count))
        port = (await _line(recv))["port"]
    else:
        server, port, result = await _python_receiver(count)
    if sender == "node":
        send = await _node("send", str(port), str(count), str(SIZE))
    else:
        send_task = asyncio.create_task(_python_send(port, count))
    if receiver == "node":
        seconds = float((await _line(recv))["seconds"])
        await recv.wait()
    else:
        seconds = await asyncio.wait_for(result, 300)
        server.close()
    if sender == "node":
        if send.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                send.kill()
        await send.wait()
    else:
        await send_task
    return seconds


def main() -> None:
    results = {}
    for sender, receiver in (("node", "node"), ("node", "python"), ("python", "node"), ("python", "python")):
        seconds = asyncio.run(run(sender, receiver))
        name = f"{sender}->{receiver}"
        results[name] = {"messages": COUNT, "bytes": SIZE, "seconds": seconds, "rate": COUNT / seconds}
    base = results["node->node"]["rate"]
    for name, r in results.items():
        r["ratio_to_node"] = r["rate"] / base
        print(f"{name:16} {r['rate']:>10,.0f} msgs/s  {r['ratio_to_node']:.2f}x node->node", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"count": COUNT, "size": SIZE, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
    sys.exit(0)
