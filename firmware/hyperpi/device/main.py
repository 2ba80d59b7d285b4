"""`hyperpi-device`: the chat service's process: settings, secrets, logging, signals, systemd.

    hyperpi-device [--config /etc/hyperpi/device.toml] [--state-dir DIR]
    hyperpi-device --simulate [--frames DIR]
    hyperpi-device --check [--config FILE]

`--check` tests the board's hardware and the network, one line per item (selfcheck.py), and exits
0 when nothing failed, else 1.

`--simulate` runs the same service on a laptop: gpiozero's mock pins instead of GPIO, luma's
dummy device instead of the panel. Keys typed in the terminal (or lines on a piped stdin) press
the board's buttons: the first letter of a button's name presses it, the capital letter holds
it; `p` saves the screen as a PNG, `q` quits. With a terminal on stdout each new frame is drawn
there in colour half-blocks.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m hyperpi.device.main` is the service process too
    from hyperpi.device import without_openssl

    without_openssl()

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from hyperpi import memory
from hyperpi.hypercore import (
    Core,
    CorruptStore,
    DiskFull,
    HypercoreError,
    KeyPair,
    StorageError,
    Store,
    core_key,
    generate_keypair,
    z32_encode,
)
from hyperpi.hypercore.secret_files import read_secret, write_atomic
from hyperpi.hypercore.storage import set_aside

from . import gpio, network, notify, selfcheck
from .boards import get_board
from .buttons import Buttons
from .config import DEFAULT_CONFIG, DEFAULT_STATE_DIR, EX_CONFIG, ConfigError, DeviceConfig, load_config
from .display import Display, open_device
from .service import SEEN_FILE, DeviceService

log = logging.getLogger("hyperpi.device")

# Exit codes (sysexits.h). firmware/hyperpi-device.service lets systemd restart only on those
# a restart can cure.
EX_UNAVAILABLE = 69  # the state directory or a secret file cannot be used: a person must look
EX_DISK_FULL = 73  # EX_CANTCREAT: the disk is full; restarting frees nothing
EX_STORE_FAILED = 75  # EX_TEMPFAIL: the store failed while running; the next start sets it aside
FEED_SECRET = "feed.secret"  # 64-byte Ed25519 secret key (seed || public key) of the own feed
NOISE_SECRET = "noise.secret"  # 64-byte Ed25519 secret key: the device's Noise static identity
# SQLite's default page cache is 2 MiB per connection; the device reads a few recent blocks per
# feed, so 512 KiB keeps lookups cached and the service under its 40 MB RSS budget.
SQLITE_CACHE_KIB = 512


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyperpi-device", description="The hyperpi chat service.")
    p.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("HYPERPI_DEVICE_CONFIG", DEFAULT_CONFIG)),
        help=f"settings file (default {DEFAULT_CONFIG})",
    )
    p.add_argument("--state-dir", type=Path, help="where feeds and secrets live (default: the config's state_dir)")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="mock GPIO pins driven from the keyboard, screen in the terminal",
    )
    p.add_argument(
        "--lan",
        action="store_true",
        help="with --simulate: listen on every interface and use mDNS as the settings say "
        "(default: loopback only, no mDNS, so a laptop simulation is not seen on the real LAN)",
    )
    p.add_argument("--frames", type=Path, help="save every new screen frame as a PNG in this folder")
    p.add_argument(
        "--check",
        action="store_true",
        help="test the board's devices, GPIO, buttons, screen, network and clock, then exit",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="least severe log lines shown (default INFO)",
    )
    from hyperpi import __version__

    p.add_argument("--version", action="version", version=f"hyperpi-device {__version__}")
    return p


def simulation_defaults(config: DeviceConfig, args: Any) -> DeviceConfig:
    """Under --simulate a laptop is not a Pi: state under the user's home unless the settings or
    --state-dir name a folder, and the real LAN left alone (loopback, no mDNS) unless --lan."""
    if not args.simulate:
        return config
    changes: dict[str, Any] = {}
    if args.state_dir is None and config.state_dir == DEFAULT_STATE_DIR:
        xdg = os.environ.get("XDG_STATE_HOME")
        base = Path(xdg) if xdg else Path.home() / ".local" / "state"
        folder = re.sub(r"[^A-Za-z0-9._-]+", "-", config.name).strip(".-") or "device"
        changes["state_dir"] = base / "hyperpi-device" / folder  # one per simulated device
    if not args.lan:
        changes.update(listen_host="127.0.0.1", mdns=False)
    config = dataclasses.replace(config, **changes)
    where = "every interface, mDNS as set" if args.lan else "loopback only, no mDNS (--lan to join the LAN)"
    log.info("simulation: state in %s; network: %s", args.state_dir or config.state_dir, where)
    return config


def load_secret(path: Path) -> KeyPair:
    """The key pair in a 0600 file of 64 bytes, made on first start; refuses a readable one
    (SecretFileError, a StorageError)."""
    try:
        data = read_secret(path)
    except FileNotFoundError:
        keypair = generate_keypair()
        write_atomic(path, keypair.secret_key)
        return keypair
    if len(data) != 64 or generate_keypair(data[:32]).secret_key != data:
        raise StorageError(f"{path} is not a 64-byte Ed25519 secret key")
    return KeyPair(data[32:], data)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check and args.simulate:
        parser.error("--check tests the real hardware; it cannot run with --simulate")
    # Under --check stdout carries only the check's lines; log records go to stderr.
    log_stream = sys.stderr if args.check else sys.stdout
    logging.basicConfig(stream=log_stream, level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"hyperpi-device: {e}", file=sys.stderr)
        return EX_CONFIG
    if args.check:
        return selfcheck.main(config, get_board(config.board).with_pins(config.buttons))
    config = simulation_defaults(config, args)
    state_dir = args.state_dir or config.state_dir
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        feed_keys = load_secret(state_dir / FEED_SECRET)
        noise_keys = load_secret(state_dir / NOISE_SECRET)
        store, repaired = open_store(state_dir / "store")
        ran_before = has_run_before(store, feed_keys, state_dir)
    except DiskFull as e:
        print(f"hyperpi-device: state directory {state_dir}: {e}", file=sys.stderr)
        return EX_DISK_FULL
    except (OSError, StorageError) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            print(f"hyperpi-device: state directory {state_dir}: the disk is full", file=sys.stderr)
            return EX_DISK_FULL
        print(f"hyperpi-device: state directory {state_dir}: {e}", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        return asyncio.run(
            run(config, store, feed_keys, noise_keys, args, started, ran_before=ran_before, repaired=repaired)
        )
    except DiskFull as e:
        print(f"hyperpi-device: feed store {state_dir / 'store'}: {e}", file=sys.stderr)
        return EX_DISK_FULL
    except HypercoreError as e:  # damaged while running: the next start sets the database aside
        print(f"hyperpi-device: feed store {state_dir / 'store'}: {e}", file=sys.stderr)
        return EX_STORE_FAILED
    finally:
        store.close()


def open_store(path: Path) -> tuple[Store, bool]:
    """The feed store, and whether it was repaired: a damaged database is set aside (kept, and
    named in the log) and an empty one opened, so the device starts anyway; its followed
    feeds are fetched again and its own feed recovered from peers (service.py)."""
    repaired = False
    try:
        store = Store(path, cache_kib=SQLITE_CACHE_KIB)
    except CorruptStore as e:
        aside = set_aside(path)
        log.error("feed store damaged (%s): set aside as %s; feeds are fetched again from peers", e, aside)
        store = Store(path, cache_kib=SQLITE_CACHE_KIB)
        repaired = True
    return store, repaired


def has_run_before(store: Store, feed_keys: KeyPair, state_dir: Path) -> bool:
    """Has this device used its feed key before? Its first start copies the key into the store's
    keys/ folder and its first stop writes seen.json; provisioning writes neither, so a fresh
    device posts its first message at once, and one that lost its store recovers it first."""
    own_key = core_key(feed_keys.public_key)
    return store.read_secret_key(own_key) is not None or (state_dir / SEEN_FILE).exists()


def open_own_feed(store: Store, feed_keys: KeyPair) -> tuple[Core, bool]:
    """The own feed, and whether it was cleared: one damaged in the store is cleared (the
    secret key stays) and recovered from peers."""
    try:
        return Core.create(store, feed_keys), False
    except CorruptStore as e:
        log.error("own feed is damaged in the store (%s): cleared, to be recovered from peers", e)
        store.clear_core(core_key(feed_keys.public_key))
        return Core.create(store, feed_keys), True


async def run(
    config: DeviceConfig,
    store: Store,
    feed_keys: KeyPair,
    noise_keys: KeyPair,
    args: Any,
    started: float,
    *,
    ran_before: bool = False,
    repaired: bool = False,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    board = get_board(config.board).with_pins(config.buttons)

    # One pin factory for the panel's DC/backlight pins and the buttons (gpio.py).
    factory = None
    try:
        factory = gpio.pin_factory(args.simulate)
    except gpio.GpioError as e:  # the chat still replicates; --check says what to fix
        log.error("no GPIO: %s", e)

    display = None
    try:
        device = open_device(board, dummy=args.simulate, pin_factory=factory)
        display = Display(device) if device is not None else None
    except Exception as e:  # a missing or unwired panel must not stop the chat service
        log.error("no screen: cannot open the %s display: %s", board.name, e)

    own, cleared = open_own_feed(store, feed_keys)
    # A feed key used before, and the store lost its feed: peers may hold more of it (service.py).
    recover = repaired or cleared or (ran_before and own.length == 0)
    service = DeviceService(
        config, store, own, display=display, state_dir=args.state_dir or config.state_dir, recover_own_feed=recover
    )
    if repaired or cleared:
        service.app.notice = "store repaired"
    exit_code = 0

    def exit_for_update(code: int) -> None:
        nonlocal exit_code
        exit_code = code
        stop.set()

    from hyperpi import __version__

    from .updating import UpdateRunner

    updates = UpdateRunner(service, args.state_dir or config.state_dir, __version__, exit_for_update)
    log.info("device %s (%s), feed %s", config.name, board.name, z32_encode(own.key))

    buttons = None
    if factory is not None:
        try:
            buttons = Buttons(board.buttons, service.handle_button, loop, pin_factory=factory)
        except Exception as e:  # GPIO busy or a pin the board lacks: the service still replicates and shows
            log.error("no buttons: %s", e)
    if args.simulate:
        log.info("hardware: simulated (mock pins, dummy display)")
    else:  # stats device nodes only: the service holds them open
        log.info("%s", selfcheck.startup_summary(board, factory, display is not None, buttons is not None))

    if display is not None and args.frames:
        args.frames.mkdir(parents=True, exist_ok=True)
        _save_every_frame(display, args.frames)
    if display is not None and args.simulate and sys.stdout.isatty():
        _draw_in_terminal(display)
    if args.simulate and buttons is not None:
        _read_keyboard(loop, buttons, display, args.frames or Path("."), stop)

    service.start()
    tasks = [asyncio.ensure_future(service.run(stop))]
    tasks.append(asyncio.ensure_future(network.run(service, config, noise_keys, stop)))
    tasks.append(asyncio.ensure_future(memory.trim_periodically(stop)))
    interval = notify.watchdog_interval()
    if interval:
        tasks.append(asyncio.ensure_future(_watchdog(interval, stop)))

    notify.notify("READY=1")
    log.info("ready in %.0f ms (hyperpi %s)", (time.monotonic() - started) * 1000, __version__)
    tasks.append(asyncio.ensure_future(updates.confirm_later(stop)))
    await stop.wait()

    notify.notify("STOPPING=1")
    log.info("stopping")
    for task in tasks:  # the network runner says goodbye on mDNS when cancelled
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if buttons is not None:
        buttons.close()
    service.close()
    if factory is not None:
        gpio.close_quietly(factory.close, "the GPIO pins")
    if exit_code:
        log.info("exiting with %d: restart into the update", exit_code)
    return exit_code


async def _watchdog(interval: float, stop: asyncio.Event) -> None:
    # Pings come from the event loop itself, so a hung loop stops them and systemd restarts us.
    while not stop.is_set():
        notify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _save_every_frame(display: Display, folder: Path) -> None:
    show = display.show
    count = 0

    def show_and_save(image: Any) -> bool:
        nonlocal count
        shown = show(image)
        if shown:
            count += 1
            display.save(folder / f"frame-{count:05d}.png")
            display.save(folder / "latest.png")
            log.info("frame saved: frame-%05d.png", count)  # tests match frames to log lines
        return shown

    display.show = show_and_save  # type: ignore[method-assign]


def _draw_in_terminal(display: Display) -> None:
    import shutil

    show = display.show

    def show_and_draw(image: Any) -> bool:
        shown = show(image)
        if shown and display.last_frame is not None:
            cols = shutil.get_terminal_size((80, 24)).columns
            sys.stdout.write("\x1b[H\x1b[2J" + terminal_art(display.last_frame, cols) + "\n")
            sys.stdout.flush()
        return shown

    display.show = show_and_draw  # type: ignore[method-assign]


def terminal_art(image: Any, max_cols: int) -> str:
    """The frame in 24-bit colour half-blocks: one character cell shows two pixel rows."""
    img = image.convert("RGB")
    if img.width > max_cols:
        img = img.resize((max_cols, max(2, img.height * max_cols // img.width)))
    px = img.load()
    rows = []
    for y in range(0, img.height - 1, 2):
        cells = []
        for x in range(img.width):
            (r, g, b), (r2, g2, b2) = px[x, y], px[x, y + 1]
            cells.append(f"\x1b[38;2;{r};{g};{b}m\x1b[48;2;{r2};{g2};{b2}m▀")
        rows.append("".join(cells) + "\x1b[0m")
    return "\n".join(rows)


def _read_keyboard(
    loop: asyncio.AbstractEventLoop,
    buttons: Buttons,
    display: Display | None,
    folder: Path,
    stop: asyncio.Event,
) -> None:
    """Keys press mock buttons: first letter presses, capital holds; p saves a PNG; q quits."""
    from .buttons import HOLD_SECONDS

    keys = {name[0].lower(): name for name in buttons.buttons}
    saved = 0
    if sys.stdin.isatty():
        import termios
        import tty

        old = termios.tcgetattr(sys.stdin)
        tty.setcbreak(sys.stdin.fileno())
        import atexit

        atexit.register(termios.tcsetattr, sys.stdin, termios.TCSADRAIN, old)
    log.info(
        "simulated buttons: %s (capital letter: hold); p: save screen; q: quit",
        ", ".join(f"{k}={v}" for k, v in keys.items()),
    )

    async def press(name: str, hold: bool) -> None:
        pin = buttons.pin(name)
        pin.drive_low()
        await asyncio.sleep(HOLD_SECONDS + 0.3 if hold else 0.05)
        pin.drive_high()

    queue: asyncio.Queue[str] = asyncio.Queue()

    async def worker() -> None:  # one key at a time, so holds do not overlap
        nonlocal saved
        while True:
            ch = await queue.get()
            if ch == "q":
                stop.set()
            elif ch == "p" and display is not None:
                saved += 1
                display.save(folder / f"screen-{saved}.png")
                log.info("saved %s", folder / f"screen-{saved}.png")
            elif ch.lower() in keys:
                await press(keys[ch.lower()], ch.isupper())

    def readable() -> None:
        data = os.read(sys.stdin.fileno(), 1024).decode(errors="ignore")
        if not data:  # stdin closed: stop reading, keep running
            loop.remove_reader(sys.stdin.fileno())
            return
        for ch in data:
            queue.put_nowait(ch)

    try:
        loop.add_reader(sys.stdin.fileno(), readable)
    except (OSError, ValueError):  # stdin is a file or /dev/null: nothing to read keys from
        log.warning("simulated buttons: stdin cannot be watched, no keyboard input")
        return
    asyncio.ensure_future(worker())


if __name__ == "__main__":
    sys.exit(main())
