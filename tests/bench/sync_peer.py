"""The Python side of the sync benchmark, the twin of tests/interop/node/bench-sync.js.

    python -m tests.bench.sync_peer serve STORE COUNT PORT   # prints {"key": hex, "port": n}, serves
    python -m tests.bench.sync_peer fetch KEYHEX STORE PORT  # prints {"blocks": n, "seconds": s}

Both talk plain TCP on 127.0.0.1; `fetch` times from dialling to the last block stored, as the
Node twin does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.stream import open_connection, serve
from hyperpi.wire.noise import keypair


def chat_block(i: int) -> bytes:
    # The same bytes as bench-sync.js (JSON.stringify of the same object).
    return json.dumps(
        {"type": "chat", "text": f"message {i}", "time": 1700000000000 + i, "nick": "bench"}, separators=(",", ":")
    ).encode()


async def run_serve(path: str, count: int, port: int) -> None:
    store = Store(path)
    core = Core.create(store)
    for start in range(core.length, count, 1000):
        core.append([chat_block(i) for i in range(start, min(start + 1000, count))])
    cores = CoreSet(store, [core])
    server = await serve("127.0.0.1", port, keypair(), lambda conn: replicate(conn, cores))
    print(json.dumps({"key": core.key.hex(), "port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


async def run_fetch(key_hex: str, path: str, port: int) -> None:
    store = Store(path)
    core = Core.open(store, bytes.fromhex(key_hex))
    done = asyncio.Event()
    remote_length = 0

    def on_progress(_core: Core, length: int) -> None:
        nonlocal remote_length
        remote_length = max(remote_length, length)
        check()

    def check(_event: object = None) -> None:
        if remote_length and core.contiguous_length >= remote_length:
            done.set()

    core.subscribe(check)
    started = time.perf_counter()
    conn = await open_connection("127.0.0.1", port, keypair())
    task = asyncio.create_task(replicate(conn, CoreSet(store, [core]), on_progress=on_progress))
    await done.wait()
    seconds = time.perf_counter() - started
    print(json.dumps({"blocks": core.contiguous_length, "seconds": seconds}), flush=True)
    conn.close()
    await asyncio.wait([task], timeout=2)
    store.close()


def main(argv: list[str]) -> None:
    mode, a, b, port = argv
    if mode == "serve":
        asyncio.run(run_serve(a, int(b), int(port)))
    else:
        asyncio.run(run_fetch(a, b, int(port)))


if __name__ == "__main__":
    main(sys.argv[1:])
