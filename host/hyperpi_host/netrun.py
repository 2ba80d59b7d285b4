"""Running a swarm from a host command: the network options, the peer identity, the event loop.

`hyperpi chat`, `pair` and `release` join the LAN swarm for a while. What they share lives
here: the `--listen/--peer/--no-mdns/-v` options, the host's persistent Noise identity (a 0600
file), starting a `Swarm` (falling back to any free port when the default one is taken),
running the command's coroutine until it finishes or Ctrl-C / SIGTERM asks it to stop, and
`serve_until`: replicate some cores until the peers hold what they need or time runs out.

    args = parser.parse_args()                       # after add_network_arguments(parser)
    options = NetworkOptions.from_args(args, default_port=0)
    async def body(stop: asyncio.Event, swarm: Swarm) -> int: ...
    exit_code = run_swarm(options, noise_keypair(folder), topics, on_connection, body)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.keys import KeyPair
from hyperpi.net.address import DEFAULT_PORT, Address, parse_address
from hyperpi.net.discovery import multicast_interfaces
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.stream import EncryptedConnection
from hyperpi.net.swarm import ConnectionHandler, Swarm
from hyperpi.wire.noise import keypair

from .cli import UserError
from .home import hyperpi_home, read_secret, write_secret

NOISE_FILE = "noise.secret"  # a peer identity (Noise static secret key, 64 bytes), mode 0600
TICK = 0.5  # s between looks at a served wait's state (and redraws of its status line)

T = TypeVar("T")


def add_network_arguments(parser: argparse.ArgumentParser, *, default_listen: str) -> None:
    """The options every swarm-joining command takes; `default_listen` is shown in --listen's help."""
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"accept peers on this address (default {default_listen})",
    )
    parser.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", help="dial this peer (repeatable)")
    parser.add_argument("--no-mdns", action="store_true", help="do not find or announce peers on the LAN with mDNS")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections and errors to stderr")


@dataclass(frozen=True)
class NetworkOptions:
    host: str
    port: int
    port_is_fixed: bool  # given with --listen: fail rather than pick another port
    peers: tuple[Address, ...]
    mdns: bool
    verbose: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, default_port: int = DEFAULT_PORT) -> NetworkOptions:
        """Checked options from `add_network_arguments`; UserError names the bad one."""
        try:
            peers = tuple(parse_address(p) for p in args.peer)
        except ValueError as error:
            raise UserError(f"--peer {error}") from None
        if args.listen is None:
            return cls("0.0.0.0", default_port, False, peers, not args.no_mdns, args.verbose)
        try:
            # Port 0 is allowed here: any free port, printed on stderr.
            host, port = parse_address(args.listen, any_port=True)
        except ValueError as error:
            raise UserError(f"--listen {error}") from None
        return cls(host, port, True, peers, not args.no_mdns, args.verbose)


def noise_keypair(folder: Path) -> KeyPair:
    """The peer identity kept in `folder`: the same across runs, so peers keep one connection
    to it (and a device can tell this host from others). Made on first use."""
    path = folder / NOISE_FILE
    secret = read_secret(path) if path.exists() else None
    if secret is None:
        pair = keypair()
        write_secret(path, pair.secret_key)
        return pair
    if len(secret) != 64 or keypair(secret[:32]).public_key != secret[32:]:
        raise UserError(f"{path} is not a valid peer key; delete it to make a new one")
    return KeyPair(secret[32:], secret)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="hyperpi: %(message)s",
        stream=sys.stderr,
    )
    if verbose:  # every dial that fails, with its reason (the swarm logs those at debug level)
        logging.getLogger("hyperpi.net.swarm").setLevel(logging.DEBUG)


async def start_swarm(
    options: NetworkOptions,
    identity: KeyPair,
    topics: Iterable[bytes],
    on_connection: ConnectionHandler,
    *,
    name: str,
) -> Swarm:
    """A started swarm on `topics`; the default port, if taken, gives way to any free one."""
    mdns = options.mdns and bool(multicast_interfaces())
    if options.mdns and not mdns:
        print(
            "hyperpi: no network interface here can do mDNS (none is up with multicast), so no peer "
            "will be found on the LAN: give one with --peer HOST:PORT",
            file=sys.stderr,
            flush=True,
        )
    ports = (options.port,) if options.port_is_fixed or options.port == 0 else (options.port, 0)
    for port in ports:
        swarm = Swarm(
            identity,
            port,
            host=options.host,
            name=name,
            mdns=mdns,
            peers=options.peers,
            on_connection=on_connection,
        )
        for topic in topics:
            await swarm.join(topic)  # before start(): in the very first mDNS announcement
        try:
            await swarm.start()
            return swarm
        except OSError as error:
            await swarm.stop()
            if port == ports[-1]:
                raise UserError(f"cannot listen on {options.host}:{port}: {error.strerror}") from None
    raise AssertionError("unreachable: the loop returns or raises")


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `main(stop)` in a new event loop; SIGINT and SIGTERM set `stop` so it can clean up
    (close connections, unpublish mDNS) and return normally."""

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(wrapper())


def serve_until(
    options: NetworkOptions,
    store: Store,
    cores: Iterable[Core],
    done: Callable[[], bool],
    timeout: float,
    *,
    on_progress: Callable[[EncryptedConnection, Core, int], None],
    on_tick: Callable[[Swarm, float], None] = lambda swarm, seconds_left: None,
    wake_on: Iterable[Core] = (),
) -> bool:
    """Replicate `cores` on the LAN (joined on their discovery keys, as the host's Noise
    identity) until `done()` or `timeout` seconds pass. `on_progress(conn, core, length)` hears
    each length a peer says it holds; `on_tick(swarm, seconds_left)` runs before each wait (at
    least every TICK); appends to a core of `wake_on` wake the wait too. True if Ctrl-C or
    SIGTERM cut it short."""
    cores = list(cores)
    shared = CoreSet(store, cores)
    changed = asyncio.Event()

    def progress(conn: EncryptedConnection, core: Core, length: int) -> None:
        on_progress(conn, core, length)
        changed.set()

    def on_connection(conn: EncryptedConnection) -> Awaitable[None]:
        return replicate(conn, shared, on_progress=lambda core, length: progress(conn, core, length))

    async def main(stop: asyncio.Event) -> bool:
        swarm = await start_swarm(
            options, noise_keypair(hyperpi_home()), [c.discovery_key for c in cores], on_connection, name="hyperpi-host"
        )
        unsubscribe = [core.subscribe(lambda _event: changed.set()) for core in wake_on]
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while not stop.is_set() and not done():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                on_tick(swarm, left)
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), timeout=min(TICK, left))
                except TimeoutError:
                    pass
        finally:
            for undo in unsubscribe:
                undo()
            await swarm.stop()
        return stop.is_set()

    return run_until_stopped(main)
