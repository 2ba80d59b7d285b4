"""The swarm: topics in, one encrypted connection per remote peer out.

`Swarm` listens for TCP connections, publishes the joined topics with `Discovery` (mDNS),
dials every peer that announces a joined topic and every static peer (`--peer HOST:PORT`),
runs the Noise handshake (`stream.py`), and hands each established connection to
`on_connection(conn)`, a coroutine that owns the connection for its lifetime (the
replicator). When it returns or the connection drops, the swarm closes the connection
and, while the peer is still wanted, dials again with backoff.

    swarm = Swarm(noise_keypair, port=49737, name="kitchen", on_connection=replicate)
    await swarm.join(core.discovery_key)   # before start(): in the very first announcement
    await swarm.start()                    # returns once our mDNS record is announced (~1.5 s);
                                           # peers found meanwhile are dialled at once
    swarm.connections        # {remote static public key: EncryptedConnection}
    await swarm.stop()

One connection per remote peer. When a second connection to the same remote static key
completes, the rule (the one hyperswarm applies) is:
- both were dialled by the same side: keep the new one. The dialler only dials again
  after losing the old connection, so the old one is a leftover that has not noticed yet;
- they were dialled by opposite sides (both peers found each other at once): keep the one
  dialled by the peer whose Noise static public key is smaller (bytewise). Both peers
  compute the same answer, so exactly one connection survives on both.
The loser is closed; its handler sees the connection end.

mDNS is a hint, TCP is the truth: an mDNS record only starts dialling. A peer stays
connected while its connection lives (keepalives every 5 s, `IDLE_TIMEOUT` of silence
closes it), whatever mDNS says, and a dead peer's cached record only costs a retry every
`MAX_BACKOFF` seconds until the record expires or is replaced.

Connections are capped below the open-file limit (`connection_cap`, counting handshakes in
progress). At the cap, a new connection evicts the oldest one whose peer has not opened a
channel for a feed we share; a peer that shares a feed is never evicted for a stranger, and
when every slot holds one, the newcomer is refused. Repeated log lines (per kind) are
rate-limited (`RateLimitFilter`), so a flood of bad connections cannot flood the journal.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import resource
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hyperpi import memory
from hyperpi.hypercore.keys import KeyPair, z32_encode

from .address import DEFAULT_PORT, Address
from .discovery import Discovery, instance_name
from .stream import ConnectionClosed, EncryptedConnection, accept, open_connection

if TYPE_CHECKING:
    from zeroconf import InterfaceChoice  # imported by Discovery only when mDNS is on

log = logging.getLogger(__name__)

# Close a connection after this long without a single byte from the peer. Peers send a
# keepalive after 5 s without writing (Node hypercore and stream.py), so 20 s is four
# missed keepalives: a peer that lost power or its link is dropped within 20 s.
IDLE_TIMEOUT = 20.0
# Wait before dialling again after a failed attempt: doubles from FIRST_BACKOFF up to
# MAX_BACKOFF, with jitter so two peers do not retry in lockstep. A LAN dial costs little,
# and a restarted device should be found again within seconds.
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 10.0
# Wait before redialling a peer whose established connection just ended: short, so a
# restart is bridged at once, but not zero, so a peer refusing us is not hammered.
RECONNECT_DELAY = 0.2

# File descriptors kept free for all but peers: the store (SQLite and its WAL), mDNS sockets,
# the display, GPIO and logs. The rest of RLIMIT_NOFILE may go to connections, so a flood of
# connections never makes accept() or the store fail with EMFILE.
FD_RESERVE = 64
# Connections at most, whatever the fd limit: a LAN chat has a handful of peers, and memory
# per connection (bounded in stream.py) adds up.
MAX_CONNECTIONS = 256
# Connections waiting in the kernel's listen queue, and so the most asyncio accepts in one go
# before the swarm's cap (`_make_room`) has seen any of them. With Python's default of 100 a burst
# was accepted whole, past the cap and the fd limit (EMFILE in the accept loop): a small queue
# keeps what is accepted and not yet counted within FD_RESERVE. A peer finding it full retries
# (TCP resends its SYN).
ACCEPT_BACKLOG = 8
# Log lines of one kind (same logger and format) written per interval; the rest are counted
# and the count is added to the next line written.
LOG_BURST = 5
LOG_INTERVAL = 10.0

# After connections end, freed memory is handed back to the OS at most this often. glibc keeps
# freed heap memory for reuse, so without it a flood of peers would leave its peak behind.
TRIM_INTERVAL = 2.0

ConnectionHandler = Callable[[EncryptedConnection], Awaitable[None]]


def connection_cap() -> int:
    """How many connections the swarm may hold: MAX_CONNECTIONS, less if RLIMIT_NOFILE is low."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


class RateLimitFilter(logging.Filter):
    """Lets LOG_BURST records of a kind through per LOG_INTERVAL seconds; counts the rest."""

    def __init__(self, burst: int = LOG_BURST, interval: float = LOG_INTERVAL) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._kinds: dict[tuple[str, str], list[float]] = {}  # -> [window start, written, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        kind = (record.name, str(record.msg)[:200])
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.interval:
            if len(self._kinds) > 1000:  # bounded: forget old kinds
                self._kinds.clear()
            dropped = int(state[2]) if state else 0
            self._kinds[kind] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} ({dropped} more like this in {self.interval:g} s not logged)"
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


_RATE_LIMIT = RateLimitFilter()
# Loggers that peers can make write: ours on the network path, and asyncio's (it reports an
# accept() that failed for want of file descriptors once a second, with a traceback).
RATE_LIMITED_LOGGERS = ("hyperpi.net.stream", "hyperpi.net.swarm", "hyperpi.net.replication", "asyncio")


def rate_limit_network_logs() -> None:
    """Install the shared RateLimitFilter on RATE_LIMITED_LOGGERS (idempotent)."""
    for name in RATE_LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        if _RATE_LIMIT not in logger.filters:
            logger.addFilter(_RATE_LIMIT)


def keeps_new(public_key: bytes, remote_key: bytes, old_dialled: bool, new_dialled: bool) -> bool:
    """The duplicate rule (module docstring): should a new connection to `remote_key`
    replace the old one? `*_dialled`: whether we dialled that connection (its initiator)."""
    if old_dialled == new_dialled:
        return True

    def dialler(we_dialled: bool) -> bytes:
        return public_key if we_dialled else remote_key

    return dialler(new_dialled) < dialler(old_dialled)


@dataclass(eq=False)
class _Slot:
    """A connection holding a file descriptor: handshaking (`conn` None) or established."""

    writer: asyncio.StreamWriter | None
    started: float = field(default_factory=time.monotonic)
    conn: EncryptedConnection | None = None

    @property
    def shares_feed(self) -> bool:
        return self.conn is not None and self.conn.shares_feed

    def evict(self, reason: str) -> None:
        if self.conn is not None:
            self.conn.close(reason)
        elif self.writer is not None:
            self.writer.close()


@dataclass
class _Link:
    """A connection the swarm adopted; `done` is set when its handler has finished."""

    conn: EncryptedConnection
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Swarm:
    """Connections to the peers sharing our topics: see the module docstring.

    `keypair` is the device's Noise static keypair (its peer identity). `port` 0 picks a
    free port (read `swarm.port` after `start()`). `name` is the device name used in the
    mDNS instance name. `mdns=False` turns discovery off (static `peers` only).
    """

    def __init__(
        self,
        keypair: KeyPair,
        port: int = DEFAULT_PORT,
        *,
        host: str = "0.0.0.0",
        name: str = "hyperpi",
        mdns: bool = True,
        peers: Iterable[Address] = (),
        on_connection: ConnectionHandler | None = None,
        interfaces: InterfaceChoice | list[str] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int | None = None,
    ) -> None:
        self.keypair = keypair
        self.max_connections = connection_cap() if max_connections is None else max_connections
        self._slots: set[_Slot] = set()  # every connection holding an fd, see _make_room
        self.on_connection = on_connection
        self._host = host
        self._port = port
        self._name = name
        self._mdns = mdns
        self._interfaces = interfaces
        self._idle_timeout = idle_timeout
        self._static: set[Address] = set(peers)
        self._topics: set[bytes] = set()
        self._links: dict[bytes, _Link] = {}  # remote static key -> adopted connection
        self._address_keys: dict[Address, bytes] = {}  # who answered at an address last time
        self._own_addresses: set[Address] = set()  # addresses that turned out to be us
        self._dialling: dict[Address, asyncio.Task[None]] = {}
        self._dialling_keys: set[bytes] = set()  # peers with a dial in progress
        self._tasks: set[asyncio.Task[None]] = set()  # incoming handlers
        self._server: asyncio.Server | None = None
        self._trim: asyncio.TimerHandle | None = None
        self.discovery: Discovery | None = None
        self._stopping = False

    # -- public API ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port we listen on (the real one once started, also when 0 was asked)."""
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    @property
    def connections(self) -> dict[bytes, EncryptedConnection]:
        """The live connections, by remote Noise static public key."""
        return {key: link.conn for key, link in self._links.items() if not link.conn.closed}

    @property
    def topics(self) -> frozenset[bytes]:
        return frozenset(self._topics)

    async def start(self) -> None:
        """Listen, start discovery (unless mdns=False), and dial the static peers."""
        rate_limit_network_logs()
        self._server = await asyncio.start_server(self._on_accept, self._host, self._port, backlog=ACCEPT_BACKLOG)
        if self._mdns:
            self.discovery = Discovery(
                self.port,
                instance_name(self._name, self.keypair.public_key),
                interfaces=self._interfaces,
                on_candidate=self._on_candidate,
            )
            await self.discovery.announce(self._topics)
            await self.discovery.start()
        for address in self._static:
            self._dial(address)

    async def stop(self) -> None:
        """Stop dialling and listening, close every connection, unpublish. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        if self._trim is not None:
            self._trim.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._dialling.values()):
            task.cancel()
        for link in list(self._links.values()):
            link.conn.close("swarm stopped")
        if self.discovery is not None:
            await self.discovery.stop()
        pending = [*self._dialling.values(), *self._tasks]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def join(self, topic: bytes) -> None:
        """Publish `topic` (a 32-byte discovery key) and connect to the peers announcing it."""
        if topic in self._topics:
            return
        self._topics.add(topic)
        if self.discovery is not None:
            await self.discovery.announce(self._topics)
            for address in self.discovery.candidates(topic):
                self._dial(address)

    async def leave(self, topic: bytes) -> None:
        """Stop publishing `topic`. Open connections stay (they may carry other cores)."""
        self._topics.discard(topic)
        if self.discovery is not None:
            await self.discovery.announce(self._topics)

    def add_peer(self, host: str, port: int) -> None:
        """A static peer: dialled (and redialled) for as long as the swarm runs."""
        self._static.add((host, port))
        if self._server is not None and not self._stopping:
            self._dial((host, port))

    # -- dialling --------------------------------------------------------------------

    def _on_candidate(self, topic: bytes, host: str, port: int) -> None:
        if topic in self._topics:
            self._dial((host, port))

    def _wanted(self, address: Address) -> bool:
        if self._stopping or address in self._own_addresses:
            return False
        if address in self._static:
            return True
        return self.discovery is not None and any(address in self.discovery.candidates(topic) for topic in self._topics)

    def _dial(self, address: Address) -> None:
        """Make sure one dial loop runs for this address."""
        task = self._dialling.get(address)
        if task is not None and not task.done():
            return
        task = asyncio.get_running_loop().create_task(self._dial_loop(address))
        self._dialling[address] = task

    async def _dial_loop(self, address: Address) -> None:
        failures = 0
        try:
            while self._wanted(address):
                known = self._address_keys.get(address)
                link = self._links.get(known) if known is not None else None
                if link is not None:
                    await link.done.wait()  # connected already: dial again once that ends
                    await asyncio.sleep(RECONNECT_DELAY)
                    continue
                if known is not None and known in self._dialling_keys:
                    # Another address of the same peer (eth0 and wlan0) is being dialled:
                    # two dials at once would only make a duplicate to resolve.
                    await asyncio.sleep(RECONNECT_DELAY)
                    continue
                if known is not None:
                    self._dialling_keys.add(known)
                try:
                    conn: EncryptedConnection | None = await open_connection(
                        *address, self.keypair, idle_timeout=self._idle_timeout
                    )
                except (OSError, ConnectionClosed, TimeoutError) as error:
                    conn = None
                    log.debug("dialling %s:%d failed: %s", *address, error)
                finally:
                    if known is not None:
                        self._dialling_keys.discard(known)
                if conn is None:
                    failures += 1
                    delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (failures - 1))
                    await asyncio.sleep(delay * random.uniform(0.75, 1.25))
                    continue
                failures = 0
                remote = conn.remote_public_key
                assert remote is not None
                if remote == self.keypair.public_key:
                    self._own_addresses.add(address)  # we dialled ourselves
                    conn.close("connected to ourselves")
                    return
                self._address_keys[address] = remote
                if self._make_room():
                    slot = _Slot(None, conn=conn)
                    self._slots.add(slot)
                    try:
                        await self._run(conn)
                    finally:
                        self._slots.discard(slot)
                        self._release_memory()
                else:
                    conn.close(f"connection cap of {self.max_connections} reached, every slot shares a feed")
                await asyncio.sleep(RECONNECT_DELAY)
        finally:
            if self._dialling.get(address) is asyncio.current_task():
                del self._dialling[address]

    # -- accepting -------------------------------------------------------------------

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self._make_room():
            log.warning(
                "connection cap of %d reached (every slot shares a feed): refused a new one", self.max_connections
            )
            writer.close()
            return
        slot = _Slot(writer)
        self._slots.add(slot)
        self._tasks.add(task)
        try:
            try:
                conn = await accept(reader, writer, self.keypair, idle_timeout=self._idle_timeout)
            except ConnectionClosed as error:
                log.info("handshake with an incoming peer failed: %s", error.reason)
                writer.close()
                return
            slot.conn = conn
            if self._stopping or conn.remote_public_key == self.keypair.public_key:
                conn.close("swarm stopped" if self._stopping else "connected to ourselves")
                return
            await self._run(conn)
        finally:
            self._slots.discard(slot)
            self._tasks.discard(task)
            self._release_memory()

    def _release_memory(self) -> None:
        """Soon, give the memory freed by ended connections back to the OS (TRIM_INTERVAL)."""
        if memory.CAN_RELEASE and self._trim is None and not self._stopping:
            self._trim = asyncio.get_running_loop().call_later(TRIM_INTERVAL, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        gc.collect()  # a connection's objects form cycles: free them (and their buffers) now
        memory.release_free_memory()

    def _make_room(self) -> bool:
        """Make sure a new connection fits under the cap: evict the oldest connection whose
        peer shares no feed with us. False if every slot holds a peer that shares one."""
        if len(self._slots) < self.max_connections:
            return True
        strangers = [slot for slot in self._slots if not slot.shares_feed]
        if not strangers:
            return False
        victim = min(strangers, key=lambda slot: slot.started)
        self._slots.discard(victim)
        age = time.monotonic() - victim.started
        log.info(
            "connection cap of %d reached: evicting a peer that shares no feed (connected %.0f s)",
            self.max_connections,
            age,
        )
        victim.evict(f"evicted after {age:.0f} s sharing no feed (connection cap of {self.max_connections} reached)")
        return True

    # -- one connection --------------------------------------------------------------

    async def _run(self, conn: EncryptedConnection) -> None:
        """Adopt `conn` (or drop it as a duplicate) and serve it until it ends."""
        remote = conn.remote_public_key
        assert remote is not None
        existing = self._links.get(remote)
        if existing is not None and not existing.conn.closed:
            if not keeps_new(self.keypair.public_key, remote, existing.conn.is_initiator, conn.is_initiator):
                conn.close("duplicate connection (kept the other one)")
                await conn.wait_closed()
                return
            existing.conn.close("duplicate connection (replaced by a newer one)")
        link = _Link(conn)
        self._links[remote] = link
        log.info("connected to %s (%s)", conn.peername, z32_encode(remote)[:16])
        try:
            if self.on_connection is not None:
                await self.on_connection(conn)
            else:
                async for _ in conn:  # nobody to hand messages to: just notice the close
                    pass
        except ConnectionClosed:
            pass
        except Exception:  # a failing handler loses its connection, never the swarm
            log.exception("connection handler failed for %s", conn.peername)
        finally:
            conn.close(conn.close_reason or "handler finished")
            if self._links.get(remote) is link:
                del self._links[remote]
            link.done.set()
            log.info("disconnected from %s: %s", conn.peername, conn.close_reason)
            await conn.wait_closed()
