"""One encrypted connection over TCP: the asyncio adapter around `wire.secret_stream`.

The sans-IO `SecretStream` does the protocol; this module only moves bytes between it and an
asyncio TCP stream, and adds the timers: a handshake timeout, keepalives after 5 s without
writing (as Node's hypercore does), and an optional read-idle timeout.

    conn = await open_connection("127.0.0.1", 4977, keypair)         # dialler = Noise initiator
    await conn.send(b"hello")
    async for plaintext in conn: ...                                   # ends when closed
    conn.close()

    server = await serve("0.0.0.0", 4977, keypair, handler)           # handler(conn) coroutine

Either TCP side can take either Noise role (`is_initiator`). A protocol error closes the
connection; `recv()` then raises `ConnectionClosed`, whose `reason` (also `close_reason`) is
one line saying why, and the reason is logged.

Memory held for peers is bounded: each connection's unsent bytes by `WRITE_BUFFER_HIGH` (a
peer that stops reading for `WRITE_STALL_TIMEOUT` is dropped), and everything held for all
peers together (frames being received, unsent bytes, what the replicator holds) by
`PEER_MEMORY_BUDGET`: past it, the connection holding the most is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from hyperpi.hypercore.keys import KeyPair
from hyperpi.wire.errors import WireError
from hyperpi.wire.secret_stream import MAX_FRAME_SIZE, HandshakeDone, Message, SecretStream

log = logging.getLogger(__name__)

# A handshake is 3 tiny messages; a peer that has not finished it in 10 s is stalled or
# hostile, and holding its socket longer only wastes a slot. (Node's hyperswarm gives a
# connection 10 s as well before it gives up on it.)
HANDSHAKE_TIMEOUT = 10.0
# Send an empty message after this many seconds without writing: Node hypercore's
# `setKeepAlive(5000)`, so a peer watching for silence sees the same rhythm from us.
KEEPALIVE_INTERVAL = 5.0
# Bytes we let queue for the socket before a sender waits: what a peer that stops reading
# costs us. Replies are made only as the socket takes them (replication.py), and reading never
# waits for writing, so two peers answering each other cannot stall each other here.
WRITE_BUFFER_HIGH = 256 * 1024
# A peer that takes none of our bytes for this long while we wait to send is dropped (as long
# as the swarm's idle timeout: a peer that does not read is as gone as one that does not write).
WRITE_STALL_TIMEOUT = 20.0
# Bytes held for all peers together: frames being received, unsent bytes, answers the
# replicator parks and replies it has queued. One 16 MiB block (the largest frame) fits with
# room to spare; past the budget the connection holding the most is dropped.
PEER_MEMORY_BUDGET = 32 * 1024 * 1024
# Bytes read from the socket per call. Each read is fully decoded before the next, so at
# most one read's worth of messages (plus one partial frame) is held in memory.
READ_CHUNK = 64 * 1024


class ConnectionClosed(Exception):
    """The connection is closed; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeTimeout(ConnectionClosed):
    """The peer did not complete the Noise handshake in time."""


class MemoryBudget:
    """Bytes held for peers, per connection, against one process-wide limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[EncryptedConnection, int] = {}

    def set(self, conn: EncryptedConnection, nbytes: int) -> None:
        """`conn` now holds `nbytes`; over the limit, the biggest holders are dropped."""
        self.total += nbytes - self._held.pop(conn, 0)
        if nbytes:
            self._held[conn] = nbytes
        while self.total > self.limit and self._held:
            victim = max(self._held, key=self._held.__getitem__)
            held = self._held[victim]
            self.set(victim, 0)
            victim._abort(f"holding {held >> 10} KiB when the peers' memory budget of {self.limit >> 20} MiB ran out")


PEER_MEMORY = MemoryBudget(PEER_MEMORY_BUDGET)


class EncryptedConnection:
    """A secret-stream connection: send and receive whole plaintext messages."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: SecretStream,
        *,
        keepalive: float | None = KEEPALIVE_INTERVAL,
        idle_timeout: float | None = None,
        budget: MemoryBudget = PEER_MEMORY,
    ) -> None:
        self._reader = reader
        self._writer = writer
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._budget = budget
        self.held_elsewhere = 0  # bytes the connection's user holds for the peer (replication.py)
        # Set once the peer proved it shares a feed with us (replication.py): such a peer may
        # send full-size frames and is never evicted to make room for a stranger (swarm.py).
        self.shares_feed = False
        self._stream = stream
        self._inbox: deque[bytes] = deque()
        self._keepalive = keepalive
        self._idle_timeout = idle_timeout
        self._last_write = time.monotonic()
        self._keepalive_task: asyncio.Task | None = None
        self._recv_lock = asyncio.Lock()
        self.close_reason: str | None = None
        peer = writer.get_extra_info("peername")
        self.peername = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    # --- properties ---

    @property
    def is_initiator(self) -> bool:
        return self._stream.is_initiator

    @property
    def remote_public_key(self) -> bytes | None:
        return self._stream.remote_public_key

    @property
    def handshake_hash(self) -> bytes | None:
        return self._stream.handshake_hash

    @property
    def public_key(self) -> bytes:
        return self._stream.public_key

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def max_frame_size(self) -> int:
        """The largest frame the peer may send; a bigger one closes the connection."""
        return self._stream.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, size: int) -> None:
        self._stream.max_frame_size = min(size, MAX_FRAME_SIZE)

    @property
    def write_buffer_size(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    def account(self) -> None:
        """Tell the memory budget what this connection holds now (may drop a connection)."""
        if not self.closed:
            held = self._stream.buffered_bytes + self.write_buffer_size + self.held_elsewhere
            self._budget.set(self, held)

    # --- setup ---

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Run the Noise handshake; raises HandshakeTimeout or ConnectionClosed on failure."""
        self._write(self._stream.initiate())
        try:
            async with asyncio.timeout(timeout):
                while not self._stream.handshake_complete:
                    await self._read_once()
        except TimeoutError:
            reason = f"handshake timed out after {timeout:g} s (peer stalled)"
            self._abort(reason)
            raise HandshakeTimeout(reason) from None
        if self._keepalive:
            self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalive_loop())

    # --- data ---

    async def send(self, plaintext: bytes) -> None:
        """Encrypt and write one message, waiting while the socket buffer is full."""
        await self.send_many((plaintext,))

    async def send_many(self, plaintexts: Iterable[bytes]) -> None:
        """Write several messages with one socket write and one drain."""
        if self.closed:
            raise ConnectionClosed(self.close_reason or "closed")
        self._write(b"".join(self._stream.send(p) for p in plaintexts))
        self.account()
        try:
            async with asyncio.timeout(WRITE_STALL_TIMEOUT):
                await self._writer.drain()
        except TimeoutError:
            self._abort(
                f"the peer stopped reading ({self.write_buffer_size >> 10} KiB unsent after {WRITE_STALL_TIMEOUT:g} s)"
            )
            raise ConnectionClosed(self.close_reason or "closed") from None
        except (ConnectionError, OSError) as e:
            self._abort(f"write failed: {e}")
            raise ConnectionClosed(self.close_reason or "closed") from None
        self.account()
        if self.closed:
            raise ConnectionClosed(self.close_reason or "closed")

    async def recv(self) -> bytes:
        """The next message; raises ConnectionClosed when the connection ends."""
        if self._inbox:  # fast path: messages already decrypted by an earlier read
            return self._inbox.popleft()
        async with self._recv_lock:
            while not self._inbox:
                if self.closed:
                    raise ConnectionClosed(self.close_reason or "closed")
                await self._read_once()
            return self._inbox.popleft()

    async def recv_many(self) -> list[bytes]:
        """Every message already received, at least one (waits for it); for callers that
        handle a burst at once. Raises ConnectionClosed when the connection ends."""
        first = await self.recv()
        rest = list(self._inbox)
        self._inbox.clear()
        return [first, *rest]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                return

    def close(self, reason: str = "closed locally") -> None:
        """Close the TCP connection (idempotent)."""
        if self.close_reason is None:
            self.close_reason = reason
        self._budget.set(self, 0)
        self._stream.close()  # a partial frame of up to 16 MiB is not kept until the object goes
        self._inbox.clear()
        if self._keepalive_task is not None and self._keepalive_task is not asyncio.current_task():
            self._keepalive_task.cancel()
        self._writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    # --- internals ---

    def _write(self, data: bytes) -> None:
        if data:
            self._writer.write(data)
            self._last_write = time.monotonic()

    def _abort(self, reason: str) -> None:
        if self.close_reason is None:
            log.info("closing connection to %s: %s", self.peername, reason)
        self.close(reason)

    async def _read_once(self) -> None:
        try:
            if self._idle_timeout is not None:
                async with asyncio.timeout(self._idle_timeout):
                    data = await self._reader.read(READ_CHUNK)
            else:
                data = await self._reader.read(READ_CHUNK)
        except TimeoutError:
            self._abort(f"no data from the peer for {self._idle_timeout:g} s")
            raise ConnectionClosed(self.close_reason or "closed") from None
        except (ConnectionError, OSError) as e:
            self._abort(f"read failed: {e}")
            raise ConnectionClosed(self.close_reason or "closed") from None
        if not data:
            if self.close_reason is None:
                self.close_reason = "closed by the peer"
            self.close(self.close_reason)
            raise ConnectionClosed(self.close_reason)
        try:
            events = self._stream.receive_data(data)
        except WireError as e:
            self._abort(f"protocol error: {e}")
            raise ConnectionClosed(self.close_reason or "closed") from None
        self._write(self._stream.data_to_send())
        self.account()
        if self.closed:
            raise ConnectionClosed(self.close_reason or "closed")
        for event in events:
            if isinstance(event, Message):
                self._inbox.append(event.plaintext)
            elif isinstance(event, HandshakeDone):
                pass  # properties read it from the stream

    async def _keepalive_loop(self) -> None:
        assert self._keepalive is not None
        while not self.closed:
            wait = self._last_write + self._keepalive - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                self._write(self._stream.keepalive())
                await self._writer.drain()
            except (ConnectionError, OSError) as e:
                self._abort(f"keepalive write failed: {e}")
                return


async def _start(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    keypair: KeyPair,
    is_initiator: bool,
    handshake_timeout: float,
    keepalive: float | None,
    idle_timeout: float | None,
) -> EncryptedConnection:
    conn = EncryptedConnection(
        reader, writer, SecretStream(is_initiator, keypair), keepalive=keepalive, idle_timeout=idle_timeout
    )
    await conn.handshake(handshake_timeout)
    return conn


async def open_connection(
    host: str,
    port: int,
    keypair: KeyPair,
    *,
    is_initiator: bool = True,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    keepalive: float | None = KEEPALIVE_INTERVAL,
    idle_timeout: float | None = None,
) -> EncryptedConnection:
    """Dial a peer and complete the handshake (the dialler is the Noise initiator by default).

    Raises OSError when the TCP connect fails, ConnectionClosed when the handshake does.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), handshake_timeout)
    return await _start(reader, writer, keypair, is_initiator, handshake_timeout, keepalive, idle_timeout)


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    keypair: KeyPair,
    *,
    is_initiator: bool = False,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    keepalive: float | None = KEEPALIVE_INTERVAL,
    idle_timeout: float | None = None,
) -> EncryptedConnection:
    """Complete the handshake on an accepted TCP connection (Noise responder by default)."""
    return await _start(reader, writer, keypair, is_initiator, handshake_timeout, keepalive, idle_timeout)


async def serve(
    host: str,
    port: int,
    keypair: KeyPair,
    on_connection: Callable[[EncryptedConnection], Awaitable[None]],
    *,
    is_initiator: bool = False,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    keepalive: float | None = KEEPALIVE_INTERVAL,
    idle_timeout: float | None = None,
) -> asyncio.Server:
    """Listen for peers; each handshaken connection goes to `on_connection` and is closed when
    it returns. A failed handshake or a crashing handler is logged and affects no other peer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await accept(
                reader,
                writer,
                keypair,
                is_initiator=is_initiator,
                handshake_timeout=handshake_timeout,
                keepalive=keepalive,
                idle_timeout=idle_timeout,
            )
        except ConnectionClosed as e:
            log.info("handshake with a peer failed: %s", e.reason)
            writer.close()
            return
        try:
            await on_connection(conn)
        except ConnectionClosed:
            pass
        except Exception:  # one peer's failure must not take the server down
            log.exception("connection handler failed for %s", conn.peername)
        finally:
            conn.close()
            await conn.wait_closed()

    return await asyncio.start_server(handle, host, port)
