"""Hostile peers against a real hyperpi replication server over loopback TCP.

One server (`serve` + `replicate` + `CoreSet`, as a device runs it) shares a feed and follows
another. Scripted peers, built from the wire layers, misbehave at each layer at the same time:
a peer stalling before and in the middle of the Noise handshake, an oversized length prefix,
random bytes after a good handshake, a garbage protomux frame, a wrong capability, and a
writer sending an upgrade with a bad signature. Each is disconnected with a logged reason,
nothing invalid is stored, and honest peers connected meanwhile still get every block, live.
The `hyperpi chat write` process is checked the same way against the Node viewer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path

import pytest

from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.stream import ConnectionClosed, EncryptedConnection, open_connection, serve
from hyperpi.wire.messages import PROTOCOL, Data, Handshake, Range, Request, Sync, capability, decode_message
from hyperpi.wire.noise import keypair
from hyperpi.wire.protomux import ChannelMessage, Protomux
from hyperpi.wire.secret_stream import SecretStream, frame

from .test_chat_interop import Proc, free_port, hyperpi, node

STEP_TIMEOUT = 30.0  # seconds for one step on a loaded 2-core CI machine
HANDSHAKE_TIMEOUT = 1.0  # the server's, short so the stalled peers are dropped within the test


async def until(condition, what: str, timeout: float = STEP_TIMEOUT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = STEP_TIMEOUT) -> None:
    """Read until the server closes the socket (EOF or reset)."""
    async with asyncio.timeout(timeout):
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass


async def raw_handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, SecretStream]:
    """A Noise handshake done by hand over a raw socket, so the peer can then send anything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stream = SecretStream(True, keypair())
    writer.write(stream.initiate())
    while not stream.handshake_complete:
        stream.receive_data(await reader.read(65536))
        writer.write(stream.data_to_send())
    return reader, writer, stream


class ScriptedPeer:
    """A remote speaking `hypercore/alpha` by hand over a real encrypted connection."""

    def __init__(self, conn: EncryptedConnection, key: bytes, discovery_key: bytes, cap: bytes | None = None) -> None:
        assert conn.handshake_hash is not None
        self.conn = conn
        self.mux = Protomux()
        cap = capability(conn.handshake_hash, key, conn.is_initiator) if cap is None else cap
        self.channel = self.mux.open(PROTOCOL, discovery_key, Handshake(cap).encode())

    def send(self, message: object) -> None:
        self.mux.send(self.channel, message.TYPE, message.encode())  # type: ignore[attr-defined]

    async def flush(self) -> None:
        await self.conn.send_many(self.mux.frames_to_send())

    async def next_request(self) -> Request:
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                for event in self.mux.receive(await self.conn.recv()):
                    if isinstance(event, ChannelMessage):
                        message = decode_message(event.type, event.payload)
                        if isinstance(message, Request):
                            return message

    async def channel_closed_by_server(self) -> None:
        """Wait for the server to close our channel (the connection stays open)."""
        async with asyncio.timeout(STEP_TIMEOUT):
            while not self.channel.closed:
                self.mux.receive(await self.conn.recv())

    async def closed_by_server(self) -> str:
        """Wait for the server to close; ConnectionClosed's reason."""
        async with asyncio.timeout(STEP_TIMEOUT):
            try:
                while True:
                    await self.conn.recv()
            except ConnectionClosed as error:
                return error.reason


async def honest_reader(port: int, store: Store, key: bytes, length: int) -> Core:
    core = Core.open(store, key)
    conn = await open_connection("127.0.0.1", port, keypair())
    session = asyncio.create_task(replicate(conn, CoreSet(store, [core])))
    try:
        await until(lambda: core.contiguous_length >= length, f"an honest peer to get {length} blocks")
    finally:
        conn.close()
        await asyncio.wait_for(session, STEP_TIMEOUT)
    return core


async def _hostile_peers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        Store(tmp_path / "server") as server_store,
        Store(tmp_path / "evil") as evil_store,
        Store(tmp_path / "honest") as honest_store,
    ):
        feed = Core.create(server_store)
        feed.append([f"message {i}".encode() for i in range(50)])
        evil_feed = Core.create(evil_store)  # the server follows it; its writer turns hostile
        evil_feed.append([b"x"] * 8)
        followed = Core.open(server_store, evil_feed.key)
        shared = CoreSet(server_store, [feed, followed])
        server = await serve(
            "127.0.0.1", 0, keypair(), lambda conn: replicate(conn, shared), handshake_timeout=HANDSHAKE_TIMEOUT
        )
        port = server.sockets[0].getsockname()[1]
        try:
            # Stalled peers: one sends nothing, one stops after the first handshake message.
            silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
            half_r, half_w = await asyncio.open_connection("127.0.0.1", port)
            half_w.write(SecretStream(True, keypair()).initiate())
            # An oversized length prefix before the handshake: refused before any buffering.
            big_r, big_w = await asyncio.open_connection("127.0.0.1", port)
            big_w.write(b"\xff\xff\xff" + b"\x00" * 100)
            await closed_by_server(big_r)
            # A frame of random bytes after a good handshake: its bad MAC ends it.
            noise_r, noise_w, _ = await raw_handshake(port)
            noise_w.write(frame(os.urandom(200)))
            await closed_by_server(noise_r)
            # A garbage protomux frame inside a valid encrypted message.
            junk = await open_connection("127.0.0.1", port, keypair())
            await junk.send(b"\x00\x01")  # an open with nothing after its type
            junk_reason = await ScriptedPeer(junk, feed.key, feed.discovery_key).closed_by_server()
            # A peer that knows the discovery key but not the key: a wrong capability.
            thief_conn = await open_connection("127.0.0.1", port, keypair())
            thief = ScriptedPeer(thief_conn, feed.key, feed.discovery_key, cap=b"\x00" * 32)
            await thief.flush()
            await thief.closed_by_server()
            # The followed feed's writer sends an upgrade with a bad signature.
            liar = ScriptedPeer(
                await open_connection("127.0.0.1", port, keypair()), evil_feed.key, evil_feed.discovery_key
            )
            liar.send(Sync(0, 8, 0, can_upgrade=True, uploading=True, downloading=True, has_manifest=True))
            liar.send(Range(0, 8))
            await liar.flush()
            request = await liar.next_request()
            proof = evil_feed.proof(request.proof_request)
            assert proof.upgrade is not None
            bad_signature = bytes([proof.upgrade.signature[0] ^ 1]) + proof.upgrade.signature[1:]
            liar.send(
                Data(
                    request.id,
                    dataclasses.replace(proof, upgrade=dataclasses.replace(proof.upgrade, signature=bad_signature)),
                )
            )
            await liar.flush()
            # Only that feed's channel is closed (a fork looks the same): the connection would
            # go on serving the other feeds.
            await liar.channel_closed_by_server()
            assert not liar.conn.closed
            liar.conn.close()
            assert (followed.length, followed.contiguous_length, followed.manifest) == (0, 0, None)
            followed.audit()

            # An honest peer still gets everything, live (the chat write test below holds a
            # stalled peer open for the whole time a Node viewer syncs).
            got = await honest_reader(port, honest_store, feed.key, 50)
            assert got.get(49) == b"message 49"
            feed.append([b"live"])
            again = await honest_reader(port, honest_store, feed.key, 51)
            assert again.get(50) == b"live"
            again.audit()
            # The stalled peers are dropped by the handshake timeout.
            await closed_by_server(silent_r, HANDSHAKE_TIMEOUT + STEP_TIMEOUT)
            await closed_by_server(half_r, HANDSHAKE_TIMEOUT + STEP_TIMEOUT)
            for w in (silent_w, half_w, big_w, noise_w):
                w.close()
        finally:
            server.close()
            await server.wait_closed()
    log = caplog.text
    closings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("closing connection")]
    assert sum("handshake timed out after 1 s" in m for m in closings) == 2, log
    assert "above the limit" in log, log
    assert "protocol error" in log, log  # the random bytes
    assert "protomux" in junk_reason or "protomux" in log, log
    assert "wrong capability" in log, log
    assert "invalid proof" in log, log
    # One line per reason.
    assert all("\n" not in record.getMessage() for record in caplog.records)


def test_hostile_peers_are_dropped_and_honest_ones_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hyperpi")
    asyncio.run(_hostile_peers(tmp_path, caplog))


# --- the hyperpi chat write process keeps serving the Node viewer ---------------------------------


async def _misbehave_at(port: int) -> asyncio.StreamWriter:
    """Stall a connection (returned, still open), send an oversized prefix and a bad frame."""
    _, stalled = await asyncio.open_connection("127.0.0.1", port)
    big_r, big_w = await asyncio.open_connection("127.0.0.1", port)
    big_w.write(b"\xff\xff\xff")
    await closed_by_server(big_r)
    noise_r, noise_w, _ = await raw_handshake(port)
    noise_w.write(frame(os.urandom(500)))
    await closed_by_server(noise_r)
    return stalled


def test_hyperpi_chat_write_keeps_serving_the_node_viewer(spawn, node_peers: Path, tmp_path: Path) -> None:
    port = free_port()
    writer: Proc = spawn(
        hyperpi("chat", "write", "--store", tmp_path / "py", "--nick", "py", "--listen", f"127.0.0.1:{port}")
    )
    key = writer.line()
    writer.listening_port()
    writer.write("first")

    async def scenario() -> None:
        stalled = await _misbehave_at(port)
        # The stalled connection is still open while the Node viewer syncs and gets a live line.
        viewer = await asyncio.create_subprocess_exec(
            *node(node_peers, "single-chat-viewer.js", key, tmp_path / "node", "--exit-after", "2"),
            "--connect",
            f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert viewer.stdout is not None
            async with asyncio.timeout(STEP_TIMEOUT):
                assert (await viewer.stdout.readline()).decode().strip() == "<py> first"
                writer.write("second")
                assert (await viewer.stdout.readline()).decode().strip() == "<py> second"
                assert await viewer.wait() == 0
        finally:
            if viewer.returncode is None:
                viewer.kill()
                await viewer.wait()
            stalled.close()

    asyncio.run(scenario())
    writer.wait_stderr("above the limit")
    writer.wait_stderr("protocol error")
    assert writer.popen.poll() is None  # still running
