"""net/stream.py over real loopback TCP: against itself in both Noise roles, against a real
Node `@hyperswarm/secret-stream` peer, a stalled handshake, keepalives and a hostile peer."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from hyperpi.net import stream as ns
from hyperpi.wire.noise import keypair

pytestmark = pytest.mark.timeout(60)

KP_A, KP_B = keypair(b"\x0a" * 32), keypair(b"\x0b" * 32)


async def _echo(conn: ns.EncryptedConnection) -> None:
    async for m in conn:
        await conn.send(m)


async def _pair(server_initiates: bool):
    server_conns: asyncio.Queue = asyncio.Queue()

    async def handler(conn):
        await server_conns.put(conn)
        await _echo(conn)

    server = await ns.serve("127.0.0.1", 0, KP_B, handler, is_initiator=server_initiates)
    port = server.sockets[0].getsockname()[1]
    client = await ns.open_connection("127.0.0.1", port, KP_A, is_initiator=not server_initiates)
    return server, client, await server_conns.get()


@pytest.mark.parametrize("server_initiates", [False, True])
def test_loopback_both_roles(server_initiates: bool) -> None:
    async def main():
        server, client, remote = await _pair(server_initiates)
        assert client.is_initiator is not server_initiates
        assert remote.is_initiator is server_initiates
        assert client.remote_public_key == KP_B.public_key
        assert remote.remote_public_key == KP_A.public_key
        assert client.handshake_hash == remote.handshake_hash and len(client.handshake_hash) == 64
        messages = [b"hello", b"x" * 200_000, bytes(range(256)) * 10]
        await client.send_many(messages)
        assert [await client.recv() for _ in messages] == messages
        client.close()
        await client.wait_closed()
        server.close()
        await server.wait_closed()
        with pytest.raises(ns.ConnectionClosed, match="closed locally"):
            await client.recv()

    asyncio.run(main())


def test_stalled_peer_times_out_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    async def main():
        async def silent(reader, writer):
            await reader.read()  # never answers the handshake

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ns.HandshakeTimeout, match="handshake timed out after 0.3 s"):
            await ns.open_connection("127.0.0.1", port, KP_A, handshake_timeout=0.3)
        server.close()

        # The server side: a stalled client is dropped, and another peer is still served.
        served = await ns.serve("127.0.0.1", 0, KP_B, _echo, handshake_timeout=1.0)
        port = served.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x20\x00\x00" + b"\x01" * 10)  # half of msg1, then silence
        good = await ns.open_connection("127.0.0.1", port, KP_A)
        await good.send(b"still serving")
        assert await good.recv() == b"still serving"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the stalled one got closed
        good.close()
        served.close()

    with caplog.at_level(logging.INFO, logger="hyperpi.net.stream"):
        asyncio.run(main())
    assert "handshake timed out" in caplog.text


def test_garbage_from_a_peer_closes_with_a_logged_reason(caplog: pytest.LogCaptureFixture) -> None:
    async def main():
        async def garbage(reader, writer):
            writer.write(b"\xff\xff\xff" + b"\x00" * 100)  # oversized length prefix
            await reader.read()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ns.ConnectionClosed, match="frame length 16777215 is above the limit"):
            await ns.open_connection("127.0.0.1", port, KP_A)
        server.close()

    with caplog.at_level(logging.INFO, logger="hyperpi.net.stream"):
        asyncio.run(main())
    assert "protocol error" in caplog.text


def test_keepalives_keep_an_idle_connection_alive() -> None:
    async def main():
        def watcher(got: asyncio.Queue):
            async def handler(conn):
                try:
                    async for m in conn:
                        await got.put(m)
                finally:
                    await got.put(conn.close_reason)

            return handler

        for keepalive, expect_alive in ((0.1, True), (None, False)):
            got: asyncio.Queue = asyncio.Queue()
            server = await ns.serve("127.0.0.1", 0, KP_B, watcher(got), idle_timeout=1.0)
            port = server.sockets[0].getsockname()[1]
            client = await ns.open_connection("127.0.0.1", port, KP_A, keepalive=keepalive)
            if expect_alive:
                await asyncio.sleep(2.0)  # twice the idle timeout, 20 keepalive periods
                assert got.empty()  # keepalives are not delivered as messages...
                await client.send(b"after idle")
                assert await asyncio.wait_for(got.get(), 2) == b"after idle"  # ...and it lived
            else:
                assert "no data from the peer for 1 s" in await asyncio.wait_for(got.get(), 5)
            client.close()
            server.close()

    asyncio.run(main())


# --- against Node's @hyperswarm/secret-stream ---------------------------------------------


async def _node(node_peers: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "node",
        str(node_peers / "secret-stream-echo.js"),
        *args,
        cwd=node_peers,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 20,  # one JSON line carries a 70 kB message as hex
    )


async def _line(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdout is not None
    return json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))


async def _exchange(conn: ns.EncryptedConnection, proc) -> None:
    hs = await _line(proc)
    assert hs["event"] == "handshake"
    assert bytes.fromhex(hs["remotePublicKey"]) == KP_A.public_key
    assert bytes.fromhex(hs["publicKey"]) == conn.remote_public_key
    assert bytes.fromhex(hs["handshakeHash"]) == conn.handshake_hash
    messages = [b"hello node", b"\x00" * 70_000, "ünïcode".encode()]
    for m in messages:
        await conn.send(m)
        assert await asyncio.wait_for(conn.recv(), 10) == m
        assert bytes.fromhex((await _line(proc))["hex"]) == m
    conn.close()
    assert (await _line(proc))["event"] == "close"
    await proc.wait()


def test_node_peer_python_initiator(node_peers: Path) -> None:
    async def main():
        proc = await _node(node_peers, "listen", "responder")
        port = (await _line(proc))["port"]
        conn = await ns.open_connection("127.0.0.1", port, KP_A)  # dialler, Noise initiator
        assert conn.is_initiator
        await _exchange(conn, proc)

    asyncio.run(main())


def test_node_peer_python_responder(node_peers: Path) -> None:
    async def main():
        done = asyncio.get_running_loop().create_future()
        procs: list = []

        async def handler(conn):
            try:
                assert not conn.is_initiator
                await _exchange(conn, procs[0])
                done.set_result(True)
            except BaseException as e:
                done.set_exception(e)

        server = await ns.serve("127.0.0.1", 0, KP_A, handler)
        port = server.sockets[0].getsockname()[1]
        procs.append(await _node(node_peers, "connect", str(port), "initiator"))
        await asyncio.wait_for(done, 30)
        server.close()

    asyncio.run(main())


def test_node_peer_python_dials_as_responder(node_peers: Path) -> None:
    async def main():
        proc = await _node(node_peers, "listen", "initiator")
        port = (await _line(proc))["port"]
        conn = await ns.open_connection("127.0.0.1", port, KP_A, is_initiator=False)
        await _exchange(conn, proc)

    asyncio.run(main())
