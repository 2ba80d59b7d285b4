"""`hyperpi chat write` / `hyperpi chat view`: the Python twins of the Hypercore tutorial's
`single-chat.js` (a writer appending chat messages) and `single-chat-viewer.js` (a viewer
printing a feed live), replicating with them and with hyperpi devices.

Two ways to write: a person's own feed (`--as NAME`, or the default person: the only one, or
the only owner), kept in the host store, so devices that follow that person show it; or, as in
the tutorial, a feed of its own in `--store DIR`, made on first use.

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
from hyperpi.device.timeline import is_status_block, sanitize
from hyperpi.feed import NAME_FILE_SUFFIX, open_named_core
from hyperpi.hypercore import Core, HypercoreError, Store, z32_encode
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import DEFAULT_PORT, Swarm

from . import home, keys, netrun, resolve
from .cli import UserError
from .storelock import LockedStore

FEED_NAME = "chat"  # the store's writable feed, by name (hyperpi.feed.open_named_core)
FEED_FILE = f"{FEED_NAME}{NAME_FILE_SUFFIX}"  # the file holding its key (hex)
MAX_QUEUED_LINES = 256  # stdin lines read ahead of the appends; reading waits while it is full
VIEW_STORE = "view-store"  # chat view's default store, apart from the one chat write and pair lock
NOTHING_ARRIVES_HINT_SECONDS = 10.0  # a viewer still empty this long says why, once
APPEND_RETRY_SECONDS = 5.0  # a failed append (full disk) is tried again this often, the line kept


def register(subparsers: argparse._SubParsersAction) -> None:
    chat = subparsers.add_parser("chat", help="write or view a chat feed (the Hypercore tutorial's twins)")
    commands = chat.add_subparsers(dest="chat_command", metavar="COMMAND", required=True)

    write = commands.add_parser(
        "write",
        help="append each line of stdin to your chat feed",
        description="Append each stdin line as a chat message to your feed and serve it to peers: "
        "the feed of a person (--as NAME, kept in the host store), or with --store a feed of its "
        "own made there on first use. Its key (z-base-32) is the first line printed. Keeps serving "
        "after end of input until interrupted.",
    )
    write.add_argument(
        "--as",
        dest="person",
        metavar="NAME",
        help="write the feed of this person from `hyperpi keys` (default: the only person, or the only owner)",
    )
    write.add_argument(
        "--store", type=folder_argument, help="tutorial mode: write a feed of its own kept in this folder"
    )
    write.add_argument("--nick", help="name shown with your messages (default: the person's name, or anon)")
    _network_arguments(write)
    write.set_defaults(func=_run_write)

    view = commands.add_parser(
        "view",
        help="print a chat feed, then new messages live",
        description="Print every message of the feed KEY, old ones first, then live ones.",
    )
    view.add_argument("key", help="a person's or device's name, or the feed's key: z-base-32, hex, or HYPERPI:")
    view.add_argument(
        "--store",
        type=folder_argument,
        help=f"folder to keep the replicated feed in (default: {VIEW_STORE} in the hyperpi home)",
    )
    view.add_argument("--json", action="store_true", help="print each message as stored, one JSON object per line")
    view.add_argument("--exit-after", type=int, metavar="N", help="exit 0 after printing N messages")
    _network_arguments(view)
    view.set_defaults(func=_run_view)


def folder_argument(text: str) -> Path:
    # Path("") is the current folder: an empty --store is a slip (an unset shell variable).
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a folder name")
    return Path(text)


def _network_arguments(parser: argparse.ArgumentParser) -> None:
    netrun.add_network_arguments(parser, default_listen=f"0.0.0.0:{DEFAULT_PORT}, or any free port if taken")


# --- the two commands ---------------------------------------------------------------------


def _run_write(args: argparse.Namespace) -> int:
    options = netrun.NetworkOptions.from_args(args)  # refuse bad options before making anything
    if args.store is not None:
        if args.person is not None:
            raise UserError("--as writes a person's feed in the host store; leave out --store (the tutorial mode)")
        store = _open_store(args.store)
        core = _own_feed(store, args.store)
        noise_folder, nick = args.store, args.nick or "anon"
    else:
        person = default_person() if args.person is None else args.person
        keypair = keys.load_keypair(keys.check_name(person))
        store = keys.open_store()
        try:
            core = Core.create(store, keypair)  # the person's feed; opened if it exists
        except HypercoreError as error:
            store.close()
            raise UserError(f"cannot open the chat feed of {person}: {error}") from None
        noise_folder, nick = home.hyperpi_home(), args.nick or person
        print(f"writing as {person}", file=sys.stderr, flush=True)
    print(z32_encode(core.key), flush=True)

    async def body(stop: asyncio.Event, swarm: Swarm) -> None:
        lines: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED_LINES)
        _read_lines_in_thread(asyncio.get_running_loop(), lines)
        appender = asyncio.ensure_future(_append_lines(core, lines, nick))
        await asyncio.wait([appender, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        appender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await appender  # an error raised there (lines not appended) ends the command

    return _run_with_swarm(args, options, store, core, body, noise_folder)


def default_person() -> str:
    """The person `chat write` writes as without --as: the only one, else the only owner."""
    people = keys.list_identities()
    owners = [p for p in people if p.owner]
    if len(people) == 1:
        return people[0].name
    if len(owners) == 1:
        return owners[0].name
    if not people:
        raise UserError(
            "no person to write as: create yourself with `hyperpi keys new --owner NAME`, "
            "or use --store DIR for a feed of its own (the tutorial)"
        )
    raise UserError(f"write as whom? give --as NAME, one of: {', '.join(p.name for p in people)}")


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
    if args.exit_after is not None and args.exit_after < 0:
        raise UserError(f"--exit-after must be 0 or more, got {args.exit_after}")
    found = resolve.feed(args.key, "KEY")
    folder = args.store if args.store is not None else home.hyperpi_home() / VIEW_STORE
    store = _open_store(folder)
    try:
        core = Core.open(store, found.key)
    except HypercoreError as error:
        store.close()
        raise UserError(f"cannot open the feed in {folder}: {error}") from None
    resolve.say("KEY", found)
    printed = 0
    read = 0  # blocks looked at; status blocks (a device's reports, not messages) are skipped

    def print_new() -> bool:
        """Print the blocks held and not yet printed; True once --exit-after is reached."""
        nonlocal printed, read
        while read < core.contiguous_length:
            if args.exit_after is not None and printed >= args.exit_after:
                break
            block = core.get(read)
            read += 1
            if not is_status_block(block):
                print(format_block(block, as_json=args.json), flush=True)
                printed += 1
        return args.exit_after is not None and printed >= args.exit_after

    # What the store already holds is shown at once, before the network is up.
    if print_new():
        store.close()
        return 0

    async def body(stop: asyncio.Event, swarm: Swarm) -> None:
        def on_change(_event: object = None) -> None:
            if print_new():
                stop.set()

        unsubscribe = core.subscribe(on_change)
        on_change()
        try:
            if not await _stopped_within(stop, NOTHING_ARRIVES_HINT_SECONDS) and core.length == 0:
                print(f"hyperpi: {_why_nothing_arrives(swarm, found.key, options.mdns)}", file=sys.stderr, flush=True)
            await stop.wait()
        finally:
            unsubscribe()

    return _run_with_swarm(args, options, store, core, body, folder)


# --- shared plumbing ----------------------------------------------------------------------


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _why_nothing_arrives(swarm: Swarm, key: bytes, mdns: bool) -> str:
    """One line for a viewer still empty after a while: a mistyped but well-formed key, or no peer."""
    peers = len(swarm.connections)
    if peers:
        return (
            f"connected to {peers} peer{'s' if peers != 1 else ''}; none has feed {z32_encode(key)[:12]}... "
            "(check the key; waiting on)"
        )
    where = "on the LAN (mDNS)" if mdns else "(mDNS is off)"
    return f"no peer found yet {where}; if the writer is elsewhere, give --peer HOST:PORT (waiting on)"


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
        return LockedStore(path)
    except HypercoreError as error:
        raise UserError(f"cannot use {path} as a store: {error}") from None
    except OSError as error:
        raise UserError(f"cannot use {path} as a store: {error.strerror}") from None


def _own_feed(store: Store, folder: Path) -> Core:
    """The feed this store writes, created on first use (hyperpi.Feed(folder, name="chat") opens it too)."""
    try:
        return open_named_core(store, FEED_NAME)
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
    args: argparse.Namespace,
    options: netrun.NetworkOptions,
    store: Store,
    core: Core,
    body: Callable,
    noise_folder: Path,
) -> int:
    netrun.setup_logging(args.verbose)
    cores = CoreSet(store, [core])

    async def main(stop: asyncio.Event) -> None:
        swarm = await netrun.start_swarm(
            options,
            netrun.noise_keypair(noise_folder),  # this store's (or the host's) peer identity
            [core.discovery_key],
            lambda conn: replicate(conn, cores),
            name="hyperpi-chat",
        )
        print(f"listening on {options.host}:{swarm.port}", file=sys.stderr, flush=True)
        try:
            await body(stop, swarm)
        finally:
            await swarm.stop()

    try:
        netrun.run_until_stopped(main)
    finally:
        store.close()
    return 0
