"""`hyperpi chat write` / `hyperpi chat view`: the Python twins of the Hypercore tutorial's
`single-chat.js` (a writer appending chat messages) and `single-chat-viewer.js` (a viewer
printing a feed live), replicating with them and with hyperpi devices.

Peers are found on the LAN with mDNS by the feed's discovery key (like the tutorial's
Hyperswarm topic), and/or given with `--peer HOST:PORT` (dial) and `--listen HOST:PORT`.
The side that dials is the Noise initiator, as with Hyperswarm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hyperpi.device.timeline import sanitize
from hyperpi.hypercore import Core, HypercoreError, Store, parse_key, z32_encode
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import DEFAULT_PORT, Swarm, parse_peer
from hyperpi.wire.noise import Keypair, keypair

from .cli import UserError
from .home import read_secret, write_secret

FEED_FILE = "chat-feed"  # the key (hex) of the feed this store writes
NOISE_FILE = "noise.secret"  # this store's peer identity (Noise static secret key), 0600


def register(subparsers: argparse._SubParsersAction) -> None:
    chat = subparsers.add_parser("chat", help="write or view a chat feed (the Hypercore tutorial's twins)")
    commands = chat.add_subparsers(dest="chat_command", metavar="COMMAND", required=True)

    write = commands.add_parser(
        "write",
        help="append each line of stdin to your chat feed",
        description="Create the feed in --store on first use (its key, z-base-32, is the first "
        "line printed), then append each stdin line as a chat message and serve the feed to peers. "
        "Keeps serving after end of input until interrupted.",
    )
    write.add_argument("--store", required=True, type=Path, help="folder holding the feed")
    write.add_argument("--nick", default="anon", help="name shown with your messages")
    _network_arguments(write)
    write.set_defaults(func=_run_write)

    view = commands.add_parser(
        "view",
        help="print a chat feed, then new messages live",
        description="Print every message of the feed KEY, old ones first, then live ones.",
    )
    view.add_argument("key", help="the feed's key: z-base-32, hex, or a HYPERPI: QR payload")
    view.add_argument("--store", required=True, type=Path, help="folder to keep the replicated feed in")
    view.add_argument("--json", action="store_true", help="print each message as stored, one JSON object per line")
    view.add_argument("--exit-after", type=int, metavar="N", help="exit 0 after printing N messages")
    _network_arguments(view)
    view.set_defaults(func=_run_view)


def _network_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"accept peers on this address (default 0.0.0.0:{DEFAULT_PORT}, or any free port if taken)",
    )
    parser.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", help="dial this peer (repeatable)")
    parser.add_argument("--no-mdns", action="store_true", help="do not find or announce peers on the LAN with mDNS")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections and errors to stderr")


# --- the two commands ---------------------------------------------------------------------


def _run_write(args: argparse.Namespace) -> int:
    store = _open_store(args.store)
    core = _own_feed(store, args.store)
    print(z32_encode(core.key), flush=True)

    async def body(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def on_line(line: str | None) -> None:
            if line is None:
                return  # end of input: keep serving the feed until interrupted
            message = {"type": "chat", "text": line, "time": int(time.time() * 1000), "nick": args.nick}
            core.append([json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()])

        _read_lines_in_thread(lambda line: loop.call_soon_threadsafe(on_line, line))
        await stop.wait()

    return _run_with_swarm(args, store, core, body)


def _run_view(args: argparse.Namespace) -> int:
    try:
        key = parse_key(args.key)
    except ValueError as error:
        raise UserError(f"{error}") from None
    store = _open_store(args.store)
    try:
        core = Core.open(store, key)
    except HypercoreError as error:
        raise UserError(f"cannot open the feed in {args.store}: {error}") from None

    async def body(stop: asyncio.Event) -> None:
        printed = 0

        def print_new(_event: object = None) -> None:
            nonlocal printed
            while printed < core.contiguous_length:
                if args.exit_after is not None and printed >= args.exit_after:
                    break
                print(format_block(core.get(printed), as_json=args.json), flush=True)
                printed += 1
            if args.exit_after is not None and printed >= args.exit_after:
                stop.set()

        unsubscribe = core.subscribe(print_new)
        print_new()
        try:
            await stop.wait()
        finally:
            unsubscribe()

    return _run_with_swarm(args, store, core, body)


# --- shared plumbing ----------------------------------------------------------------------


def format_block(block: bytes, *, as_json: bool) -> str:
    """One line for a block: `<nick> text` for chat messages (text from a feed is untrusted:
    control characters are stripped so it cannot drive the terminal), or the JSON as stored."""
    try:
        value = json.loads(block)
    except (ValueError, UnicodeDecodeError):
        value = None
    if as_json:
        if isinstance(value, dict):
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return json.dumps({"type": "raw", "hex": block.hex()})
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        nick = value.get("nick") if isinstance(value.get("nick"), str) else "?"
        return f"<{sanitize(nick, 24)}> {sanitize(value['text'])}"
    if value is not None:
        return sanitize(json.dumps(value, ensure_ascii=False))
    return f"[{len(block)} bytes]"


def _open_store(path: Path) -> Store:
    try:
        return Store(path)
    except HypercoreError as error:
        raise UserError(f"cannot use {path} as a store: {error}") from None
    except OSError as error:
        raise UserError(f"cannot use {path} as a store: {error.strerror}") from None


def _own_feed(store: Store, folder: Path) -> Core:
    """The feed this store writes, created on first use."""
    marker = folder / FEED_FILE
    try:
        if marker.exists():
            core = Core.open(store, bytes.fromhex(marker.read_text().strip()))
            if not core.writable:
                raise UserError(f"{folder} holds no secret key for its chat feed; it cannot write")
            return core
        core = Core.create(store)
        marker.write_text(core.key.hex() + "\n")
        return core
    except (HypercoreError, ValueError) as error:
        raise UserError(f"cannot open the chat feed in {folder}: {error}") from None


def _noise_keypair(folder: Path) -> Keypair:
    """This store's peer identity: the same across runs, so peers keep one connection to it."""
    path = folder / NOISE_FILE
    secret = read_secret(path) if path.exists() else None
    if secret is None:
        pair = keypair()
        write_secret(path, pair.secret_key)
        return pair
    if len(secret) != 64 or keypair(secret[:32]).public_key != secret[32:]:
        raise UserError(f"{path} is not a valid peer key; delete it to make a new one")
    return Keypair(secret[32:], secret)


def _read_lines_in_thread(deliver: Callable[[str | None], None]) -> None:
    # stdin may be a terminal, a pipe or a file: a thread reads any of them the same way.
    def reader() -> None:
        for line in sys.stdin:
            deliver(line.rstrip("\r\n"))
        deliver(None)

    threading.Thread(target=reader, name="stdin", daemon=True).start()


def _listen_address(text: str | None) -> tuple[str, int, bool]:
    """(host, port, port_is_fixed)."""
    if text is None:
        return "0.0.0.0", DEFAULT_PORT, False
    try:
        host, port = parse_peer(text)
    except ValueError as error:
        raise UserError(str(error).replace("peer", "listen address", 1)) from None
    return host, port, True


def _run_with_swarm(args: argparse.Namespace, store: Store, core: Core, body: Callable) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="hyperpi: %(message)s",
        stream=sys.stderr,
    )
    try:
        peers = [parse_peer(p) for p in args.peer]
    except ValueError as error:
        raise UserError(str(error)) from None
    host, port, fixed = _listen_address(args.listen)
    cores = CoreSet(store, [core])

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        swarm = None
        for attempt_port in (port, 0) if not fixed else (port,):
            swarm = Swarm(
                _noise_keypair(args.store),
                attempt_port,
                host=host,
                name="hyperpi-chat",
                mdns=not args.no_mdns,
                peers=peers,
                on_connection=lambda conn: replicate(conn, cores),
            )
            await swarm.join(core.discovery_key)
            try:
                await swarm.start()
                break
            except OSError as error:
                await swarm.stop()
                if fixed or attempt_port == 0:
                    raise UserError(f"cannot listen on {host}:{attempt_port}: {error.strerror}") from None
        assert swarm is not None
        print(f"listening on {host}:{swarm.port}", file=sys.stderr, flush=True)
        try:
            await body(stop)
        finally:
            await swarm.stop()

    try:
        asyncio.run(main())
    finally:
        store.close()
    return 0
