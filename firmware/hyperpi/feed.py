"""`Feed`: the library's front door, one Hypercore feed with a value encoding.

The layers underneath stay as they are (`hypercore.Core` and `Store`, sans-IO; `net.stream`,
`net.replication` and `net.swarm`, the asyncio adapters); a `Feed` only wires them together,
the way Node's `new Hypercore(storage, key, { valueEncoding })` does:

    feed = Feed("./writer-storage", value_encoding="json")      # your feed, made on first use
    print(feed.id)                                               # its key, z-base-32
    feed.append({"text": "hi"})                                  # or append(a, b, c)
    await feed.join()                                            # LAN swarm on its discovery key

    feed = Feed("./reader-storage", key, value_encoding="json")  # someone else's feed
    await feed.replicate(reader, writer, is_initiator=False)     # any asyncio stream pair, or a socket
    async for message in feed.read(live=True): ...

A folder may hold many feeds: without a key, `name` picks the writable one (`name="chat"` is the
feed `hyperpi chat write --store FOLDER` writes). Blocks from peers are data: a block the
encoding cannot read raises `DecodeError` naming it, and JSON is read within the limits of
`hyperpi.blockjson`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from hyperpi import blockjson
from hyperpi.hypercore import Core, CoreEvent, KeyPair, Store, parse_key, z32_encode
from hyperpi.hypercore.core import MAX_BLOCK_BYTES
from hyperpi.hypercore.secret_files import write_atomic
from hyperpi.net import replication
from hyperpi.net.stream import HANDSHAKE_TIMEOUT, ConnectionClosed, accept
from hyperpi.net.swarm import Address, Swarm
from hyperpi.wire.noise import keypair

ENCODINGS = ("binary", "utf-8", "json")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
__all__ = ["ConnectionClosed", "DecodeError", "Feed", "NotAvailable"]

NAME_FILE_SUFFIX = "-feed"  # <folder>/<name>-feed holds the key (hex) of the writable feed `name`


class DecodeError(ValueError):
    """A block the feed's value encoding cannot read (one line: which block, and why)."""


class NotAvailable(LookupError):
    """A block this store does not hold (asked with `wait=False`)."""


class Feed:
    """One Hypercore feed in a store folder, with a value encoding (see the module docstring).

    `storage`: a folder (created 0700) or an open `Store` (which the feed then does not close).
    `key`: the feed's key (32 bytes, z-base-32, hex or a HYPERPI: QR payload); None opens, or
    creates on first use, the writable feed called `name` in the folder.
    `value_encoding`: "binary" (bytes), "utf-8" (str) or "json" (any JSON value).
    """

    def __init__(
        self,
        storage: str | os.PathLike[str] | Store,
        key: bytes | str | None = None,
        *,
        name: str = "default",
        value_encoding: str = "binary",
        compat: bool = False,
    ) -> None:
        encoding = "utf-8" if value_encoding == "utf8" else value_encoding
        if encoding not in ENCODINGS:
            raise ValueError(f"value_encoding must be one of {', '.join(ENCODINGS)}, not {value_encoding!r}")
        self.value_encoding = encoding
        self._owns_store = not isinstance(storage, Store)
        self.store = storage if isinstance(storage, Store) else Store(Path(storage))
        try:
            if key is None:
                self.core = open_named_core(self.store, name, compat=compat)
            else:
                self.core = Core.open(self.store, parse_key(key) if isinstance(key, str) else key)
        except BaseException:
            if self._owns_store:
                self.store.close()
            raise
        self._cores = replication.CoreSet(self.store, [self.core])
        self._swarms: list[Swarm] = []
        self._waiters: list[asyncio.Future[None]] = []  # get(wait=True) calls; woken on each change
        self._unsubscribe = self.core.subscribe(self._changed)

    # --- what the feed is ---------------------------------------------------------------

    @property
    def key(self) -> bytes:
        return self.core.key

    @property
    def id(self) -> str:
        """The key as z-base-32 text (what people share, as Node's `core.id`)."""
        return z32_encode(self.core.key)

    @property
    def discovery_key(self) -> bytes:
        """The swarm topic: a hash of the key, so announcing it does not reveal the key."""
        return self.core.discovery_key

    @property
    def length(self) -> int:
        """Blocks in the feed as far as we know (held here or not)."""
        return self.core.length

    @property
    def writable(self) -> bool:
        return self.core.writable

    def has(self, i: int) -> bool:
        return self.core.has(i)

    # --- values -------------------------------------------------------------------------

    def append(self, *values: Any) -> int:
        """Append one value or several in one signed commit; returns the new length."""
        return self.core.append([self.encode(value) for value in values])

    async def get(self, i: int, *, wait: bool = True, timeout: float | None = None) -> Any:
        """Block `i`, decoded. With `wait`, waits until it is appended or downloaded
        (TimeoutError after `timeout` seconds); without, NotAvailable if it is not held."""
        if not isinstance(i, int) or i < 0:
            raise ValueError(f"a block index is an integer >= 0, not {i!r}")
        if not self.core.has(i):
            if not wait:
                raise NotAvailable(f"block {i} of feed {self.id[:8]}... is not held here")
            async with asyncio.timeout(timeout):
                while not self.core.has(i):
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:  # a timed-out or cancelled wait leaves nothing behind
                        with contextlib.suppress(ValueError):
                            self._waiters.remove(waiter)
        return self.decode(self.core.get(i), i)

    async def read(self, start: int = 0, end: int | None = None, *, live: bool = False) -> AsyncIterator[Any]:
        """The values from `start` in order, waiting for missing blocks. Ends at `end`, or at
        the length when called; with `live`, never ends: new blocks follow as they arrive."""
        if end is None and not live:
            end = self.core.length
        i = start
        while end is None or i < end:
            yield await self.get(i)
            i += 1

    def encode(self, value: Any) -> bytes:
        if self.value_encoding == "json":
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        if self.value_encoding == "utf-8":
            if not isinstance(value, str):
                raise TypeError(f"a utf-8 feed takes str values, not {type(value).__name__}")
            return value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"a binary feed takes bytes values, not {type(value).__name__}")
        return bytes(value)

    def decode(self, block: bytes, index: int | None = None) -> Any:
        if self.value_encoding == "binary":
            return block
        if self.value_encoding == "utf-8":
            return block.decode("utf-8", errors="replace")  # as Node decodes text
        try:
            return blockjson.decode(block, MAX_BLOCK_BYTES)
        except ValueError as error:
            where = f"block {index}" if index is not None else "a block"
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DecodeError(f"{where} of feed {self.id[:8]}... is not JSON: {reason}") from None

    def _changed(self, _event: CoreEvent) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- peers --------------------------------------------------------------------------

    async def replicate(
        self,
        reader: asyncio.StreamReader | socket.socket,
        writer: asyncio.StreamWriter | None = None,
        is_initiator: bool | None = None,
        *,
        noise_keypair: KeyPair | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> str:
        """Replicate over one connection until it ends; returns why it ended (one line).

        `reader`/`writer`: an asyncio stream pair, or a connected socket alone. `is_initiator`
        is this side's Noise role, whichever side dialled: True on one side, False on the other
        (Node's `core.replicate(isInitiator)`). Raises ConnectionClosed if the handshake fails."""
        if not isinstance(is_initiator, bool):
            raise TypeError("replicate() needs is_initiator=True on one side and False on the other")
        if isinstance(reader, socket.socket):
            if writer is not None:
                raise TypeError("replicate() takes a socket alone, or a reader and a writer")
            reader, writer = await asyncio.open_connection(sock=reader)
        elif writer is None:
            raise TypeError("replicate() needs the writer that goes with the reader")
        conn = await accept(
            reader,
            writer,
            noise_keypair or keypair(),
            is_initiator=is_initiator,
            handshake_timeout=handshake_timeout,
        )
        try:
            await replication.replicate(conn, self._cores)
        finally:
            conn.close(conn.close_reason or "replication ended")
            await conn.wait_closed()
        return conn.close_reason or "closed"

    async def join(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        peers: Iterable[Address] = (),
        mdns: bool = True,
        noise_keypair: KeyPair | None = None,
        name: str = "hyperpi",
    ) -> Swarm:
        """Join the LAN swarm on this feed's discovery key: listen on `host:port` (0: any
        free port), announce the topic with mDNS and dial every peer announcing it (and each
        of `peers`, (host, port) pairs), replicating the feed with each. Returns the started
        `Swarm` (`swarm.port`, `swarm.connections`); `aclose()` stops it."""
        swarm = Swarm(
            noise_keypair or keypair(),
            port,
            host=host,
            name=name,
            mdns=mdns,
            peers=peers,
            on_connection=lambda conn: replication.replicate(conn, self._cores),
        )
        await swarm.join(self.discovery_key)
        await swarm.start()
        self._swarms.append(swarm)
        return swarm

    # --- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store (if the feed opened it). A joined swarm must be stopped first:
        `await feed.aclose()` does both."""
        if self._swarms:
            raise RuntimeError("the feed has joined a swarm: close it with `await feed.aclose()`")
        self._unsubscribe()
        for waiter in self._waiters:
            waiter.cancel()
        if self._owns_store:
            self.store.close()

    async def aclose(self) -> None:
        """Stop the swarms joined with `join()`, then close."""
        for swarm in self._swarms:
            await swarm.stop()  # idempotent: also after the caller stopped it
        self._swarms.clear()
        self.close()

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Feed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        mode = "writer" if self.writable else "reader"
        return f"<Feed {self.id[:8]}... {mode} length={self.length} {self.value_encoding}>"


def open_named_core(store: Store, name: str, *, compat: bool = False) -> Core:
    """The writable core called `name` in the store's folder, created on first use (its key in
    `<folder>/<name>-feed`; `hyperpi chat write --store` keeps its feed as the name "chat")."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"a feed name is 1-64 letters, digits, '.', '_' or '-', not {name!r}")
    marker = store.path / f"{name}{NAME_FILE_SUFFIX}"
    try:
        text = marker.read_text()
    except FileNotFoundError:
        core = Core.create(store, compat=compat)
        write_atomic(marker, (core.key.hex() + "\n").encode())  # 0600, as the store's files
        return core
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{marker} does not hold a feed key (64 hex digits)") from None
    core = Core.open(store, key)
    if not core.writable:
        raise ValueError(f"{store.path} holds no secret key for its feed {name!r}: it cannot write")
    return core
