"""Hostile peers on loopback against the real stack (secret-stream, protomux, replicator,
swarm) at small scale: big frames from strangers, memory held for peers, peers that stop
reading, request floods and connection floods. Each case: the peer is dropped with one line
in the log, the memory held for it stays within the named limit, honest peers are served."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.types import BlockRequest, ProofRequest
from hyperpi.net import stream as ns
from hyperpi.net.replication import UNTRUSTED_FRAME_SIZE, CoreSet, replicate
from hyperpi.net.swarm import LOG_BURST, RateLimitFilter, Swarm
from hyperpi.wire.messages import Request
from hyperpi.wire.noise import keypair
from hyperpi.wire.replicator import MAX_REMOTE_REQUESTS, REPLY_BATCH, Replicator
from hyperpi.wire.secret_stream import SecretStream

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def feed(path: Path, blocks: int, size: int = 40) -> Core:
    core = Core.create(Store(path))
    core.append([f"{i:08d}".encode().ljust(size, b".") for i in range(blocks)])
    return core


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def serve_feed(core: Core) -> tuple[asyncio.Server, int, list[ns.EncryptedConnection]]:
    """A replicating server for `core` on loopback; the list collects its connections."""
    conns: list[ns.EncryptedConnection] = []
    cores = CoreSet(core.store, [core])

    async def handler(conn: ns.EncryptedConnection) -> None:
        conns.append(conn)
        await replicate(conn, cores)

    server = await ns.serve("127.0.0.1", 0, keypair(), handler)
    return server, server.sockets[0].getsockname()[1], conns


async def key_holder(
    port: int, key: bytes, tmp: Path, *, rcvbuf: int | None = None
) -> tuple[ns.EncryptedConnection, Replicator]:
    """A peer that knows `key`: connected, with the core's channel open both ways."""
    sock = None
    if rcvbuf is not None:  # a small receive window, so a peer that stops reading stops the server soon
        import socket

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        conn = ns.EncryptedConnection(reader, writer, SecretStream(True, keypair()))
        await conn.handshake()
    else:
        conn = await ns.open_connection("127.0.0.1", port, keypair())
    assert conn.handshake_hash is not None
    reader_core = Core.open(Store(tmp), key)
    rep = Replicator(conn.is_initiator, conn.handshake_hash, cores=[reader_core])
    while not rep.sharing:
        await conn.send_many(rep.frames_to_send())
        rep.receive_many(await conn.recv_many())
    rep.frames_to_send()  # its announcements are not needed
    return conn, rep


def requests(rep: Replicator, count: int, blocks: int) -> bytes:
    """One batch frame of `count` block requests (what a flooding peer sends)."""
    [peer] = rep._peers.values()
    with rep.mux.batch():
        for i in range(count):
            rep.mux.send(
                peer.channel, Request.TYPE, Request(i, ProofRequest(0, block=BlockRequest(i % blocks, 0))).encode()
            )
    [frame] = rep.mux.frames_to_send()
    return frame


# --- frames and memory ------------------------------------------------------------------------


def test_a_stranger_may_not_send_big_frames_a_peer_sharing_the_feed_may(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        writer = feed(tmp_path / "w", 4)
        server, port, conns = await serve_feed(writer)
        try:
            stranger = await ns.open_connection("127.0.0.1", port, keypair())
            await stranger.send(b"\x00" * (UNTRUSTED_FRAME_SIZE + 1))
            await wait_until(lambda: bool(conns) and conns[0].closed)
            assert "above the limit of 65536" in (conns[0].close_reason or "")
            # A peer that opened the feed's channel may send a frame of a megabyte (a big block).
            conn, rep = await key_holder(port, writer.key, tmp_path / "r")
            [peer] = rep._peers.values()
            rep.mux.send(peer.channel, 99, b"x" * (1 << 20))  # a message type from the future: ignored
            await conn.send_many(rep.frames_to_send())
            await asyncio.sleep(0.3)
            assert not conns[1].closed
            assert conns[1].max_frame_size > 1 << 20
            conn.close()
        finally:
            server.close()
        await wait_until(lambda: ns.PEER_MEMORY.total == 0)

    with caplog.at_level(logging.INFO, logger="hyperpi.net.stream"):
        asyncio.run(scenario())


def test_the_peers_memory_budget_drops_the_biggest_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ns.PEER_MEMORY, "limit", 3 << 20)

    async def scenario() -> None:
        writer = feed(tmp_path / "w", 4)
        server, port, conns = await serve_feed(writer)
        try:
            small, _ = await key_holder(port, writer.key, tmp_path / "r1")
            big, _ = await key_holder(port, writer.key, tmp_path / "r2")
            # Length prefixes of 1 and 2.5 MiB frames, and a little of each: incomplete frames.
            for conn, size in ((small, 1 << 20), (big, 5 << 19)):
                conn._writer.write(size.to_bytes(3, "little") + b"x" * 1000)
            await wait_until(lambda: conns[1].closed)
            assert "memory budget of 3 MiB" in (conns[1].close_reason or "")
            assert not conns[0].closed
            assert ns.PEER_MEMORY.total <= 3 << 20
            small.close()
            big.close()
        finally:
            server.close()
        await wait_until(lambda: ns.PEER_MEMORY.total == 0)

    asyncio.run(scenario())


def test_a_peer_that_stops_reading_holds_little_and_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ns, "WRITE_STALL_TIMEOUT", 1.0)
    blocks, size = 400, 32 * 1024  # 12.5 MiB of answers asked for, never read

    async def scenario() -> None:
        writer = feed(tmp_path / "w", blocks, size)
        server, port, conns = await serve_feed(writer)
        try:
            conn, rep = await key_holder(port, writer.key, tmp_path / "r", rcvbuf=64 * 1024)
            conn._writer.write(b"")  # (nothing read from here on)
            await conn.send_many([requests(rep, blocks, blocks)])
            peak = 0
            async with asyncio.timeout(15):
                while not conns[0].closed:
                    peak = max(peak, conns[0].write_buffer_size)
                    await asyncio.sleep(0.01)
            assert "stopped reading" in (conns[0].close_reason or "")
            assert peak <= ns.WRITE_BUFFER_HIGH + REPLY_BATCH * (size + 1024)
            conn.close()
        finally:
            server.close()

    asyncio.run(scenario())


# --- request floods -------------------------------------------------------------------------------


def test_a_flood_of_requests_in_one_frame_ends_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        writer = feed(tmp_path / "w", 16)
        server, port, conns = await serve_feed(writer)
        try:
            # As many requests as an honest peer may have in flight: all answered.
            conn, rep = await key_holder(port, writer.key, tmp_path / "r1")
            await conn.send_many([requests(rep, MAX_REMOTE_REQUESTS, 16)])
            answers = 0
            async with asyncio.timeout(20):
                while answers < MAX_REMOTE_REQUESTS:
                    for plaintext in await conn.recv_many():
                        answers += sum(1 for e in rep.mux.receive(plaintext) if getattr(e, "type", None) == 3)
            assert answers == MAX_REMOTE_REQUESTS
            # 5,000 requests in one frame: the peer is dropped, nothing is answered.
            flood, rep2 = await key_holder(port, writer.key, tmp_path / "r2")
            await flood.send_many([requests(rep2, 5_000, 16)])
            await wait_until(lambda: conns[1].closed)
            with pytest.raises(ns.ConnectionClosed):
                while True:
                    for plaintext in await flood.recv_many():
                        assert not [e for e in rep2.mux.receive(plaintext) if getattr(e, "type", None) == 3]
            conn.close()
        finally:
            server.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "requests at once" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]


# --- connection floods ---------------------------------------------------------------------------


def test_strangers_are_evicted_at_the_connection_cap_and_a_peer_sharing_a_feed_is_never(tmp_path: Path) -> None:
    cap = 8

    async def trickle(port: int, held: list[ns.EncryptedConnection | None]) -> None:
        try:
            conn = await ns.open_connection("127.0.0.1", port, keypair(), keepalive=None)
        except ns.ConnectionClosed:  # evicted while still handshaking
            held.append(None)
            return
        held.append(conn)
        with pytest.raises(ns.ConnectionClosed):
            while True:  # a byte now and then: never idle, never a whole frame
                conn._writer.write(b"\x05")
                await conn.recv()

    async def scenario() -> None:
        writer = feed(tmp_path / "w", 20)
        cores = CoreSet(writer.store, [writer])
        swarm = Swarm(
            keypair(), 0, host="127.0.0.1", mdns=False, max_connections=cap, on_connection=lambda c: replicate(c, cores)
        )
        await swarm.start()
        reader = Core.open(Store(tmp_path / "r"), writer.key)
        honest = Swarm(
            keypair(),
            0,
            host="127.0.0.1",
            mdns=False,
            peers=[("127.0.0.1", swarm.port)],
            on_connection=lambda c: replicate(c, CoreSet(reader.store, [reader])),
        )
        strangers: list[ns.EncryptedConnection | None] = []
        tasks = []
        try:
            tasks += [asyncio.create_task(trickle(swarm.port, strangers)) for _ in range(3 * cap)]
            await wait_until(lambda: len(strangers) == 3 * cap)
            assert len(swarm._slots) <= cap
            await honest.start()
            await wait_until(lambda: reader.contiguous_length == 20)
            link = swarm._links[honest.keypair.public_key]
            tasks += [asyncio.create_task(trickle(swarm.port, strangers)) for _ in range(3 * cap)]
            await wait_until(lambda: len(strangers) == 6 * cap)
            await asyncio.sleep(0.2)
            assert len(swarm._slots) <= cap
            assert not link.conn.closed  # the peer sharing the feed kept its slot throughout
            writer.append([b"live"])
            await wait_until(lambda: reader.contiguous_length == 21)
        finally:
            await honest.stop()
            await swarm.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


SERVER = """
import asyncio, logging, resource, sys
from pathlib import Path
from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
core = Core.create(Store(Path(sys.argv[1])))
core.append([b"hello"] * 10)

async def main():
    cores = CoreSet(core.store, [core])
    swarm = Swarm(keypair(), 0, host="127.0.0.1", mdns=False, on_connection=lambda c: replicate(c, cores))
    await swarm.start()
    print(swarm.port, core.key.hex(), swarm.max_connections, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_connection_flood_at_a_low_fd_limit_never_exhausts_fds(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "firmware"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVER), str(tmp_path / "w")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port_text, key_hex, cap_text = proc.stdout.readline().split()
        assert int(cap_text) < 100 - 30  # the cap leaves file descriptors for the rest

        async def scenario() -> None:
            port = int(port_text)
            # More connections than the server has file descriptors, arriving while it does not run
            # (a loaded machine): they wait in the kernel's listen queue, and asyncio accepts all it
            # holds in one go, before the swarm's cap sees them (swarm.ACCEPT_BACKLOG bounds that).
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                connecting = [asyncio.ensure_future(asyncio.open_connection("127.0.0.1", port)) for _ in range(150)]
                await asyncio.sleep(1.0)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            flood = [await c for c in connecting]
            strangers = [await ns.open_connection("127.0.0.1", port, keypair()) for _ in range(60)]
            reader = Core.open(Store(tmp_path / "r"), bytes.fromhex(key_hex))
            honest = Swarm(
                keypair(),
                0,
                host="127.0.0.1",
                mdns=False,
                peers=[("127.0.0.1", port)],
                on_connection=lambda c: replicate(c, CoreSet(reader.store, [reader])),
            )
            await honest.start()
            try:
                await wait_until(lambda: reader.contiguous_length == 10, timeout=20)
            finally:
                await honest.stop()
                for conn in strangers:
                    conn.close()
                for _, w in flood:
                    w.close()

        asyncio.run(scenario())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Too many open files" not in err
    assert "Traceback" not in err
    assert len(err.splitlines()) < 150  # rate-limited: not a line per refused or evicted peer


def test_repeated_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("hyperpi.test.ratelimit")
    limiter = RateLimitFilter(interval=60)
    logger.addFilter(limiter)
    try:
        with caplog.at_level(logging.INFO, logger="hyperpi.test.ratelimit"):
            for i in range(1000):
                logger.warning("peer %s failed: %s", f"10.0.0.{i % 250}", "reason")
                logger.info("another kind %d", i)
    finally:
        logger.removeFilter(limiter)
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == LOG_BURST
    assert len([r for r in caplog.records if "another kind" in r.getMessage()]) == LOG_BURST
