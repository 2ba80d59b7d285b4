"""Replication over an encrypted connection: the asyncio adapter around `wire.replicator`.

`CoreSet` is what a peer shares: its own feed and the feeds it follows, all in one `Store`.
`replicate(conn, cores)` runs the replicator on one connection until it ends: it feeds
received messages to the sans-IO `Replicator`, applies each received burst in one SQLite
transaction (thousands of proofs a second would be too slow one commit each), and sends
whatever the replicator queued. Local appends and downloads on other connections reach this
one through the cores' events, so a block appended anywhere travels live.

    cores = CoreSet(store, [my_feed, friend_feed])
    await replicate(conn, cores, on_progress=lambda core, length: ...,
                    on_remote_head=lambda core, fork, length: ...)

Reading never waits for writing: received messages are applied at once, and the replies to
the remote's requests (queued, at most `MAX_REMOTE_REQUESTS` per core, in the replicator) are
made in small batches by a flush task only as fast as the socket takes them. Until the remote
opens a channel for a feed we share, its frames may be at most `UNTRUSTED_FRAME_SIZE`.

A misbehaving peer ends only its own connection, with a one-line reason in the log. A peer
holding another version of a feed (a fork) or sending bad proofs for it loses only that
feed's channel; the log says so once per feed per CoreSet, however often it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from hyperpi.hypercore import Core, HypercoreError, Store
from hyperpi.wire.errors import WireError
from hyperpi.wire.replicator import FeedRefused, PeerProgress, RemoteHead, Replicator
from hyperpi.wire.secret_stream import MAX_FRAME_SIZE

from .stream import ConnectionClosed, EncryptedConnection

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Core, int], None]
RemoteHeadCallback = Callable[[Core, int, int], None]  # core, fork, length

# Messages handled between two sends. Answering a whole burst before sending anything would
# make the two peers take turns (one works while the other waits); small chunks keep both
# busy, and still share one transaction and one batch frame per chunk.
CHUNK = 32
# Largest frame from a peer that has not yet opened a channel for a feed we share. Opens are
# ~100 bytes each, so this takes hundreds of cores at once; a stranger cannot make us buffer
# 16 MiB frames (secret_stream.MAX_FRAME_SIZE, the limit once a feed is shared).
UNTRUSTED_FRAME_SIZE = 64 * 1024
# Bytes of our own unsent messages (announcements, requests) past which reading waits for the
# socket to take them. An honest peer makes us queue a few KiB; a flood of syncs would not.
MAX_UNSENT = 1024 * 1024


class CoreSet:
    """The cores shared with peers, by discovery key. Sessions running when a core is added
    open a channel for it at once (a device that starts following a feed)."""

    def __init__(self, store: Store, cores: Iterable[Core] = ()) -> None:
        self.store = store
        self._cores: dict[bytes, Core] = {}
        self._sessions: set[_Session] = set()
        self.refused: set[bytes] = set()  # feed keys a peer sent bad proofs for (logged once each)
        for core in cores:
            self.add(core)

    def add(self, core: Core) -> None:
        if core.discovery_key in self._cores:
            return
        self._cores[core.discovery_key] = core
        for session in list(self._sessions):
            session.attach(core)

    def remove(self, core: Core) -> None:
        if self._cores.pop(core.discovery_key, None) is not None:
            for session in list(self._sessions):
                session.detach(core)

    def get(self, discovery_key: bytes) -> Core | None:
        return self._cores.get(discovery_key)

    def __iter__(self) -> Iterator[Core]:
        return iter(list(self._cores.values()))

    def __len__(self) -> int:
        return len(self._cores)


class _Session:
    """One connection's replication: a reader loop and sends serialised by a lock."""

    def __init__(
        self,
        conn: EncryptedConnection,
        cores: CoreSet,
        on_progress: ProgressCallback | None,
        on_remote_head: RemoteHeadCallback | None = None,
    ) -> None:
        assert conn.handshake_hash is not None, "replicate() needs a handshaken connection"
        self.conn = conn
        self.cores = cores
        self.on_progress = on_progress
        self.on_remote_head = on_remote_head
        self.replicator = Replicator(conn.is_initiator, conn.handshake_hash, lookup=cores.get)
        self._unsubscribe: dict[bytes, Callable[[], None]] = {}
        self._send_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None

    def attach(self, core: Core) -> None:
        if core.discovery_key in self._unsubscribe:
            return
        self._unsubscribe[core.discovery_key] = core.subscribe(lambda event: self._changed(core))
        self.replicator.add_core(core)
        self._schedule_flush()

    def detach(self, core: Core) -> None:
        unsubscribe = self._unsubscribe.pop(core.discovery_key, None)
        if unsubscribe:
            unsubscribe()
        self.replicator.remove_core(core)
        self._schedule_flush()

    def _changed(self, core: Core) -> None:
        # Called after a commit: a local append, or blocks downloaded on any connection.
        self.replicator.core_changed(core)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader loop sees the close and ends
            await self._flush()

    async def _flush(self) -> None:
        async with self._send_lock:
            while True:
                self._dispatch_events()
                with self.cores.store.transaction(write=False):  # the answers' reads, in one go
                    frames = self.replicator.frames_to_send()
                if frames and not self.conn.closed:
                    await self.conn.send_many(frames)  # waits while the peer is not reading
                if not self.replicator.replies_pending or self.conn.closed:
                    return
                await asyncio.sleep(0)  # a reply batch at a time: other peers and the screen run between

    def _dispatch_events(self) -> None:
        for event in self.replicator.take_events():
            if isinstance(event, PeerProgress) and self.on_progress:
                self.on_progress(event.core, event.length)
            elif isinstance(event, RemoteHead) and self.on_remote_head:
                self.on_remote_head(event.core, event.fork, event.length)
            elif isinstance(event, FeedRefused):
                self.detach(event.core)  # this connection only: other peers still serve it
                if event.core.key not in self.cores.refused:
                    self.cores.refused.add(event.core.key)
                    log.warning(
                        "peer %s: %s; it holds another version of that feed (a fork) or lies about it:"
                        " that feed is not replicated with it any more, the other feeds are",
                        self.conn.peername,
                        event.reason,
                    )

    def _account(self) -> None:
        self.conn.held_elsewhere = self.replicator.held_bytes
        self.conn.account()

    async def run(self) -> None:
        self.cores._sessions.add(self)
        if not self.conn.shares_feed:
            self.conn.max_frame_size = UNTRUSTED_FRAME_SIZE
        try:
            for core in self.cores:
                self.attach(core)
            await self._flush()
            while True:
                if not await self._handle(await self.conn.recv_many()):
                    return
        except ConnectionClosed:
            return
        finally:
            self.conn.held_elsewhere = 0
            self.cores._sessions.discard(self)
            for unsubscribe in self._unsubscribe.values():
                unsubscribe()
            self._unsubscribe.clear()
            if self._flush_task is not None:
                self._flush_task.cancel()

    async def _handle(self, burst: list[bytes]) -> bool:
        """Apply a burst of received messages; False once the connection is closed. (A method
        of its own so the burst, up to a 16 MiB block, is freed before the next read.)"""
        for start in range(0, len(burst), CHUNK):
            error = self._receive(burst[start : start + CHUNK])
            if error is not None:
                log.warning("peer %s: %s", self.conn.peername, error)
                self.conn.close(error)
                return False
            if not self.conn.shares_feed and self.replicator.sharing:
                self.conn.shares_feed = True
                self.conn.max_frame_size = MAX_FRAME_SIZE
            self._account()
            if self.replicator.mux.queued_bytes > MAX_UNSENT:
                await self._flush()  # only a flooding peer gets here: read no more until sent
            else:
                self._schedule_flush()
            await asyncio.sleep(0)  # a busy peer must not hold the event loop
        return True

    def _receive(self, burst: list[bytes]) -> str | None:
        """Apply a burst of messages in one transaction; the reason to disconnect, if any.
        A bad message stops the burst, and what came before it is kept: it was verified.
        A storage failure undoes the whole burst (it is fetched again on the next connection)."""
        try:
            with self.cores.store.transaction():
                try:
                    self.replicator.receive_many(burst)
                except WireError as error:
                    return str(error)
        except HypercoreError as error:  # storage trouble: drop this peer, keep serving others
            return f"storage error while replicating: {error}"
        return None


async def replicate(
    conn: EncryptedConnection,
    cores: CoreSet,
    *,
    on_progress: ProgressCallback | None = None,
    on_remote_head: RemoteHeadCallback | None = None,
) -> None:
    """Replicate `cores` over `conn` until the connection ends (the swarm's on_connection).

    `on_progress(core, length)`: the remote now holds blocks [0, length) of `core`.
    `on_remote_head(core, fork, length)`: the remote says it holds that head of `core`."""
    await _Session(conn, cores, on_progress, on_remote_head).run()
