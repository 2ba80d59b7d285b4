"""Several cores on one connection: one `hypercore/alpha` channel per core, one TCP stream.

Python <-> Python through `CoreSet` (three cores, then a fourth added while connected), and
Python <-> Node with `multi-core.js`, which shares one `core.replicate()` stream between
three Node cores. Blocks appended while connected travel live on every channel.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.stream import EncryptedConnection, open_connection, serve
from hyperpi.wire.noise import keypair

STEP_TIMEOUT = 30.0  # seconds for one step on a loaded 2-core CI machine


async def until(condition: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def block(c: int, b: int) -> bytes:
    return f"core {c} block {b}".encode()


def all_have(cores: list[Core], length: int) -> Callable[[], bool]:
    return lambda: all(core.contiguous_length >= length for core in cores)


async def _python_to_python(tmp_path: Path) -> None:
    with Store(tmp_path / "a") as store_a, Store(tmp_path / "b") as store_b:
        writers = [Core.create(store_a) for _ in range(4)]
        for c, core in enumerate(writers):
            core.append([block(c, b) for b in range(5)])
        readers = [Core.open(store_b, w.key) for w in writers]
        served = CoreSet(store_a, writers[:3])
        fetched = CoreSet(store_b, readers[:3])
        connections: list[EncryptedConnection] = []

        async def on_connection(conn: EncryptedConnection) -> None:
            connections.append(conn)
            await replicate(conn, served)

        server = await serve("127.0.0.1", 0, keypair(), on_connection)
        conn = await open_connection("127.0.0.1", server.sockets[0].getsockname()[1], keypair())
        progress: dict[bytes, int] = {}
        session = asyncio.create_task(
            replicate(conn, fetched, on_progress=lambda core, n: progress.__setitem__(core.key, n))
        )
        try:
            await until(all_have(readers[:3], 5), "three cores over one connection")
            # Live on every channel.
            for c, core in enumerate(writers[:3]):
                core.append([block(c, 5)])
            await until(all_have(readers[:3], 6), "live appends on all three channels")
            # A core both sides start sharing while connected gets a channel on the same connection.
            served.add(writers[3])
            fetched.add(readers[3])
            await until(all_have(readers, 5), "a fourth core added while connected")
            assert len(connections) == 1 and not conn.closed
            assert readers[3].length == 5 and readers[0].get(5) == block(0, 5)
            # The writer's side heard each reader's progress (range announcements) too.
            assert {progress.get(w.key) for w in writers[:3]} == {6}
            for core in readers:
                core.audit()
        finally:
            conn.close()
            await asyncio.wait_for(session, STEP_TIMEOUT)
            server.close()
            await server.wait_closed()


def test_three_cores_then_a_fourth_over_one_python_connection(tmp_path: Path) -> None:
    asyncio.run(_python_to_python(tmp_path))


async def _start_node(node_peers: Path, *args: str | Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "node",
        str(node_peers / "multi-core.js"),
        *map(str, args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    async with asyncio.timeout(STEP_TIMEOUT):
        line = await stream.readline()
    assert line, "the Node peer ended early"
    return line.decode().rstrip("\n")


async def _stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.kill()
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    await proc.wait()
    return err


async def _node_writer_to_python(node_peers: Path, tmp_path: Path) -> None:
    writer = await _start_node(node_peers, "write", tmp_path / "node", 4, "--listen", "127.0.0.1:0")
    try:
        keys = [bytes.fromhex(await _line(writer.stdout)) for _ in range(3)]
        port = int((await _line(writer.stderr)).rsplit(":", 1)[1])  # "listening H:P"
        with Store(tmp_path / "py") as store:
            readers = [Core.open(store, key) for key in keys]
            conn = await open_connection("127.0.0.1", port, keypair())  # Python dials: initiator
            session = asyncio.create_task(replicate(conn, CoreSet(store, readers)))
            try:
                await until(all_have(readers, 4), "three Node cores over one connection")
                assert [r.get(3) for r in readers] == [block(c, 3) for c in range(3)]
                assert writer.stdin is not None
                writer.stdin.write(b"more\n")
                assert await _line(writer.stdout) == "appended 5"
                await until(all_have(readers, 5), "live Node appends on all three channels")
                assert [r.get(4) for r in readers] == [block(c, 4) for c in range(3)]
                for core in readers:
                    core.audit()
                assert not conn.closed
            finally:
                conn.close()
                await asyncio.wait_for(session, STEP_TIMEOUT)
    finally:
        err = await _stop(writer)
    assert "replication stream closed" not in err, err


def test_three_node_cores_over_one_connection_to_python(node_peers: Path, tmp_path: Path) -> None:
    asyncio.run(_node_writer_to_python(node_peers, tmp_path))


async def _python_writer_to_node(node_peers: Path, tmp_path: Path) -> None:
    with Store(tmp_path / "py") as store:
        writers = [Core.create(store) for _ in range(3)]
        for c, core in enumerate(writers):
            core.append([block(c, b) for b in range(3)])
        connections = 0

        async def on_connection(conn: EncryptedConnection) -> None:
            nonlocal connections
            connections += 1
            await replicate(conn, CoreSet(store, writers))

        server = await serve("127.0.0.1", 0, keypair(), on_connection)  # Python: responder
        port = server.sockets[0].getsockname()[1]
        keys = [w.key.hex() for w in writers]
        reader = await _start_node(node_peers, "read", tmp_path / "node", *keys, 4, "--connect", f"127.0.0.1:{port}")
        try:
            lines = [await _line(reader.stdout) for _ in range(9)]
            assert sorted(lines) == sorted(f"core {c}: core {c} block {b}" for c in range(3) for b in range(3))
            for c, core in enumerate(writers):
                core.append([block(c, 3)])
            lines = [await _line(reader.stdout) for _ in range(3)]
            assert sorted(lines) == [f"core {c}: core {c} block 3" for c in range(3)]
            async with asyncio.timeout(STEP_TIMEOUT):
                assert await reader.wait() == 0
            assert connections == 1
        finally:
            err = await _stop(reader)
            server.close()
            await server.wait_closed()
    assert "replication stream closed" not in err, err


def test_three_python_cores_over_one_connection_to_node(node_peers: Path, tmp_path: Path) -> None:
    asyncio.run(_python_writer_to_node(node_peers, tmp_path))
