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
import concurrent.futures
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hyperpi import blockjson
from hyperpi.device.timeline import sanitize
from hyperpi.hypercore import Core, HypercoreError, Store, parse_key, z32_encode
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import DEFAULT_PORT

from . import home, netrun
from .cli import UserError

FEED_FILE = "chat-feed"  # the key (hex) of the feed this store writes
MAX_QUEUED_LINES = 256  # stdin lines read ahead of the appends; reading waits while it is full
APPEND_RETRY_SECONDS = 5.0  # a failed append (full disk) is tried again this often, the line kept


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
    netrun.add_network_arguments(parser, default_listen=f"0.0.0.0:{DEFAULT_PORT}, or any free port if taken")


# --- the two commands ---------------------------------------------------------------------


def _run_write(args: argparse.Namespace) -> int:
    options = netrun.NetworkOptions.from_args(args)  # refuse bad options before making anything
    store = _open_store(args.store)
    core = _own_feed(store, args.store)
    print(z32_encode(core.key), flush=True)

    async def body(stop: asyncio.Event) -> None:
        lines: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED_LINES)
        _read_lines_in_thread(asyncio.get_running_loop(), lines)
        appender = asyncio.ensure_future(_append_lines(core, lines, args.nick))
        await asyncio.wait([appender, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        appender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await appender  # an error raised there (lines not appended) ends the command

    return _run_with_swarm(args, options, store, core, body)


async def _append_lines(core: Core, lines: asyncio.Queue[str | None], nick: str) -> None:
    """Append each line as a chat message; at end of input, keep serving until interrupted.
    A line that cannot be appended (full disk) is kept and tried again: nothing is dropped."""
    while (line := await lines.get()) is not None:
        message = {"type": "chat", "text": line, "time": int(time.time() * 1000), "nick": nick}
        block = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        failed = False
        while True:
            try:
                core.append([block])
                break
            except ValueError as error:  # too large: no retry can help
                print(f"hyperpi: line not appended: {error}", file=sys.stderr, flush=True)
                break
            except HypercoreError as error:
                if not failed:  # one line per failure, not one per retry
                    print(
                        f"hyperpi: cannot append ({error}); the line is kept and tried again "
                        f"every {APPEND_RETRY_SECONDS:.0f} s (Ctrl-C gives up)",
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
                failed = True
                try:
                    await asyncio.sleep(APPEND_RETRY_SECONDS)
                except asyncio.CancelledError:
                    waiting = 1 + lines.qsize()
                    raise UserError(f"stopped with {waiting} line(s) not appended, from: {line[:80]!r}", 1) from None
        if failed:
            print("hyperpi: the kept line is appended", file=sys.stderr, flush=True)
        await asyncio.sleep(0)  # a burst of piped lines must not hold replication up
    await asyncio.Event().wait()  # end of input: serve the feed until interrupted


def _run_view(args: argparse.Namespace) -> int:
    options = netrun.NetworkOptions.from_args(args)
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

    return _run_with_swarm(args, options, store, core, body)


# --- shared plumbing ----------------------------------------------------------------------


def format_block(block: bytes, *, as_json: bool) -> str:
    """One line for a block: `<nick> text` for chat messages (text from a feed is untrusted:
    control characters are stripped so it cannot drive the terminal), or the JSON as stored."""
    try:
        value = blockjson.decode(block)
    except ValueError:  # not JSON, or over the size or nesting limit
        value = None
    if as_json:
        if isinstance(value, dict):
            text = block.decode()
            # As stored, unless it holds what a terminal acts on or reads as a line break (C0 and
            # C1 controls, bidi overrides, U+2028...): then the same JSON with those \u-escaped.
            return text if text.isprintable() else _escape_unprintable(json.dumps(value, ensure_ascii=False))
        return json.dumps({"type": "raw", "hex": block.hex()})
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        nick = value.get("nick") if isinstance(value.get("nick"), str) else "?"
        return f"<{sanitize(nick, 24)}> {sanitize(value['text'])}"
    if value is not None:
        return sanitize(json.dumps(value, ensure_ascii=False))
    return f"[{len(block)} bytes]"


def _escape_unprintable(text: str) -> str:
    # Only JSON strings can hold such characters (json.dumps puts none between tokens), and
    # json.dumps(ch) is ch's \u escape (a surrogate pair above U+FFFF).
    return "".join(ch if ch.isprintable() else json.dumps(ch)[1:-1] for ch in text)


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
        home.write_atomic(marker, (core.key.hex() + "\n").encode(), home.SECRET_MODE)  # as the store's files
        return core
    except (HypercoreError, ValueError) as error:
        raise UserError(f"cannot open the chat feed in {folder}: {error}") from None
    except OSError as error:
        raise UserError(f"cannot open the chat feed in {folder}: {error.strerror}") from None


def _read_lines_in_thread(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Put each stdin line in `lines`, then None; waits while `lines` is full."""

    def put(line: str | None) -> None:
        put_line = lines.put(line)
        try:
            asyncio.run_coroutine_threadsafe(put_line, loop).result()
        except RuntimeError:  # the loop is closed: the command is ending
            put_line.close()
            raise

    # stdin may be a terminal, a pipe or a file: a thread reads any of them the same way.
    # (Through the text layer: a daemon thread blocked in sys.stdin.buffer aborts the exit.)
    def reader() -> None:
        sys.stdin.reconfigure(encoding="utf-8", errors="replace")  # a stray byte is no fatal error
        try:
            for line in sys.stdin:
                put(line.rstrip("\r\n"))
            put(None)
        except (RuntimeError, concurrent.futures.CancelledError):
            pass  # the command is ending

    threading.Thread(target=reader, name="stdin", daemon=True).start()


def _run_with_swarm(
    args: argparse.Namespace, options: netrun.NetworkOptions, store: Store, core: Core, body: Callable
) -> int:
    netrun.setup_logging(args.verbose)
    cores = CoreSet(store, [core])

    async def main(stop: asyncio.Event) -> None:
        swarm = await netrun.start_swarm(
            options,
            netrun.noise_keypair(args.store),  # this store's peer identity
            [core.discovery_key],
            lambda conn: replicate(conn, cores),
            name="hyperpi-chat",
        )
        print(f"listening on {options.host}:{swarm.port}", file=sys.stderr, flush=True)
        try:
            await body(stop)
        finally:
            await swarm.stop()

    try:
        netrun.run_until_stopped(main)
    finally:
        store.close()
    return 0
