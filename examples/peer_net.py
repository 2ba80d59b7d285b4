"""What the examples share, as tests/interop/node/peer-net.js does for the Node scripts: options,
plain TCP in place of a swarm, stdin lines, and one-line errors.

Options: --listen HOST:PORT (TCP server), --connect HOST:PORT (TCP client, repeatable),
--initiator / --responder (this side's Noise role; by default the side that dials initiates),
--nick N, --json, --exit-after N. Without --listen or --connect the feed joins the LAN swarm
(mDNS) on its discovery key, as the Node tutorial joins Hyperswarm.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from hyperpi import ConnectionClosed, Feed
from hyperpi.hypercore import HypercoreError

MAX_QUEUED_LINES = 256  # stdin lines read ahead of the appends
_tasks: set[asyncio.Task[None]] = set()  # connections being served (kept referenced)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--listen", type=host_port)
    parser.add_argument("--connect", type=host_port, action="append", default=[])
    parser.add_argument("--initiator", dest="role", action="store_const", const=True, default=None)
    parser.add_argument("--responder", dest="role", action="store_const", const=False)
    parser.add_argument("--nick", default="python")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--exit-after", type=int, default=0)
    return parser.parse_args(argv)


async def replicate_over_tcp(feed: Feed, opts: argparse.Namespace) -> None:
    """Replicate `feed` with every TCP peer per the options, or join the LAN swarm. Prints
    "listening HOST:PORT" on stderr once a server is bound (port 0 picks one)."""
    if opts.listen is None and not opts.connect:
        swarm = await feed.join()
        print(f"joined the LAN swarm, listening 0.0.0.0:{swarm.port}", file=sys.stderr, flush=True)
        return
    role = opts.role

    async def attach(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dialled: bool) -> None:
        try:
            reason = await feed.replicate(reader, writer, dialled if role is None else role)
            print(f"replication ended: {reason}", file=sys.stderr, flush=True)
        except ConnectionClosed as error:
            print(f"replication failed: {error.reason}", file=sys.stderr, flush=True)

    if opts.listen is not None:
        server = await asyncio.start_server(lambda r, w: attach(r, w, False), *opts.listen)
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening {host}:{port}", file=sys.stderr, flush=True)
    for host, port in opts.connect:

        async def dial(host: str = host, port: int = port) -> None:
            try:
                await attach(*await asyncio.open_connection(host, port), True)
            except OSError as error:
                print(f"cannot connect to {host}:{port}: {error.strerror}", file=sys.stderr, flush=True)

        task = asyncio.ensure_future(dial())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


async def stdin_lines() -> AsyncIterator[str]:
    """The lines of stdin (a terminal, a pipe or a file), read by a thread so the event loop
    keeps replicating meanwhile; the thread waits while MAX_QUEUED_LINES are queued."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED_LINES)

    def read() -> None:  # a daemon thread: Ctrl-C does not wait for a line to end
        sys.stdin.reconfigure(errors="replace")  # type: ignore[union-attr]
        for line in itertools.chain(sys.stdin, [None]):
            text = line.rstrip("\r\n") if line is not None else None
            try:
                asyncio.run_coroutine_threadsafe(queue.put(text), loop).result()
            except RuntimeError:  # the loop has closed: the program is ending
                return

    threading.Thread(target=read, daemon=True).start()
    while (text := await queue.get()) is not None:
        yield text


def printable(text: str) -> str:
    """Text from a feed without the characters a terminal acts on (escapes, controls)."""
    return "".join(ch for ch in text if ch.isprintable())


def run(main: Callable[[], Coroutine[Any, Any, None]], program: str) -> None:
    """Run `main`; bad input or storage trouble ends it with one line, Ctrl-C quietly."""
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (ValueError, TypeError, HypercoreError, OSError) as error:
        sys.exit(f"{program}: {error}")
