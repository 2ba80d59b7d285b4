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
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hyperpi.wire.noise import Keypair

from .discovery import Discovery, instance_name
from .stream import ConnectionClosed, EncryptedConnection, accept, open_connection

if TYPE_CHECKING:
    from zeroconf import InterfaceChoice  # imported by Discovery only when mDNS is on

log = logging.getLogger(__name__)

DEFAULT_PORT = 49737  # the device's fixed replication port (device config uses the same)
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

ConnectionHandler = Callable[[EncryptedConnection], Awaitable[None]]
Address = tuple[str, int]


def parse_peer(text: str) -> Address:
    """`HOST:PORT` (or `[IPv6]:PORT`) as a (host, port) pair; ValueError says what is wrong."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"peer {text!r} is not HOST:PORT (for example 192.168.1.23:{DEFAULT_PORT})")
    return host, int(port_text)


def keeps_new(public_key: bytes, remote_key: bytes, old_dialled: bool, new_dialled: bool) -> bool:
    """The duplicate rule (module docstring): should a new connection to `remote_key`
    replace the old one? `*_dialled`: whether we dialled that connection (its initiator)."""
    if old_dialled == new_dialled:
        return True

    def dialler(we_dialled: bool) -> bytes:
        return public_key if we_dialled else remote_key

    return dialler(new_dialled) < dialler(old_dialled)


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
        keypair: Keypair,
        port: int = DEFAULT_PORT,
        *,
        host: str = "0.0.0.0",
        name: str = "hyperpi",
        mdns: bool = True,
        peers: Iterable[Address] = (),
        on_connection: ConnectionHandler | None = None,
        interfaces: InterfaceChoice | list[str] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.keypair = keypair
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
        self._server = await asyncio.start_server(self._on_accept, self._host, self._port)
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
        return self.discovery is not None and any(
            address in self.discovery.candidates(topic) for topic in self._topics
        )

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
                await self._run(conn)
                await asyncio.sleep(RECONNECT_DELAY)
        finally:
            if self._dialling.get(address) is asyncio.current_task():
                del self._dialling[address]

    # -- accepting -------------------------------------------------------------------

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                conn = await accept(reader, writer, self.keypair, idle_timeout=self._idle_timeout)
            except ConnectionClosed as error:
                log.info("handshake with an incoming peer failed: %s", error.reason)
                writer.close()
                return
            if self._stopping or conn.remote_public_key == self.keypair.public_key:
                conn.close("swarm stopped" if self._stopping else "connected to ourselves")
                return
            await self._run(conn)
        finally:
            self._tasks.discard(task)

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
        log.info("connected to %s (%s)", conn.peername, remote.hex()[:16])
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
