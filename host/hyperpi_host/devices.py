"""`hyperpi devices`: the devices provisioned from this computer, and the peers seen on the LAN.

`hyperpi provision` records each device's public identity in `<home>/devices/NAME.json` (feed
key, Noise key, board, owner's control feed, the follows it was given). This module reads those
records for every command that takes a device name; `hyperpi devices` lists them beside what mDNS
sees (browsing `_hypercore._tcp.local.` for a few seconds, publishing nothing), and
`hyperpi devices NAME` shows one device's feed key and QR code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hyperpi.hypercore.keys import discovery_key, z32_encode

from . import home
from .cli import UserError
from .provisioning import DEVICES_DIR, NAME_RE

if TYPE_CHECKING:
    from hyperpi.net.discovery import Peer

LAST_SEEN_FILE = "last-seen.json"  # <home>/last-seen.json: when and where `devices` last saw each one
DEFAULT_TIMEOUT = 2.0  # s; mDNS answers arrive within ~120 ms, resolving takes one more round
MAX_TIMEOUT = 60.0  # s; a longer wait finds nothing more, peers answer the first query


# --- the records `hyperpi provision` writes -----------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A device provisioned from this computer, as `hyperpi provision` recorded it."""

    name: str
    feed_key: bytes
    noise_key: bytes | None  # its peer identity; None: any peer holding the entry counts
    control_key: bytes | None  # its owner's control feed; None: provisioned without --owner
    board: str = "?"
    provisioned_at: int = 0  # Unix time
    follows: tuple[tuple[str, bytes], ...] = ()  # given with `provision --follow`, in its settings


def record_path(name: str) -> Path:
    from .provision import check_name

    return home.home_subdir(DEVICES_DIR) / f"{check_name(name)}.json"


def is_recorded(name: str) -> bool:
    """True if a device `name` was provisioned here (reads nothing but the folder)."""
    folder = home.home_path() / DEVICES_DIR
    return bool(NAME_RE.fullmatch(name)) and (folder / f"{name}.json").is_file()


def load_device(name: str) -> Device:
    """The recorded device `name`; UserError if there is none (or the record is damaged)."""
    path = record_path(name)
    try:
        data = json.loads(path.read_text())
        noise = data.get("noise_public_key_hex")
        owner = data.get("owner_hex")
        follows = tuple((str(f["name"]), _key32(f["key_hex"])) for f in data.get("follows", []))
        return Device(
            name=name,
            feed_key=_key32(data["feed_key_hex"]),
            noise_key=_key32(noise) if noise else None,
            control_key=_key32(owner) if owner else None,
            board=str(data.get("board", "?")),
            provisioned_at=int(data.get("provisioned_at", 0)),
            follows=follows,
        )
    except FileNotFoundError:
        known = ", ".join(d.name for d in list_devices()) or "none yet"
        raise UserError(
            f"no device named {name!r} was provisioned from this computer (known: {known}); "
            "devices are recorded by `hyperpi provision`"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is damaged; provision the device again to rewrite it") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None


def _key32(text: str) -> bytes:
    key = bytes.fromhex(text)
    if len(key) != 32:
        raise ValueError("not a 32-byte key")
    return key


def list_devices() -> list[Device]:
    """Every readable device record, by name."""
    folder = home.home_path() / DEVICES_DIR
    devices = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if NAME_RE.fullmatch(path.stem):
            try:
                devices.append(load_device(path.stem))
            except (UserError, home.HomeError):
                continue  # a damaged record is reported when that device is named
    return devices


# --- the command ---------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list the devices provisioned from here and the hyperpi peers seen on the LAN (mDNS)",
        description="Without NAME: list the devices provisioned from this computer (name, board, "
        "feed key, where mDNS sees it), then every hyperpi peer on the LAN: instance name, "
        "address:port, number of topics. Networks that block multicast show nothing there; use "
        "--peer HOST:PORT with chat and pair commands. With NAME: that device's feed key and QR code.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="show this provisioned device's keys and QR code")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to listen on the LAN (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--no-mdns", action="store_true", help="only list the devices provisioned from here")
    parser.add_argument("--qr", action="store_true", help="with NAME: print the feed key's QR code")
    parser.add_argument("--png", type=Path, metavar="FILE", help="with NAME: save the QR code as a PNG")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name is not None:
        return _show(load_device(args.name), args)
    if args.qr or args.png is not None:
        raise UserError("--qr and --png need a device NAME")
    if not 0 < args.timeout <= MAX_TIMEOUT:
        raise UserError(f"--timeout must be between 0 and {MAX_TIMEOUT:g} seconds, got {args.timeout:g}")
    devices = list_devices()
    peers = [] if args.no_mdns else asyncio.run(browse(args.timeout))
    if devices:
        _print_devices(devices, peers, lan=not args.no_mdns)
    elif args.no_mdns:
        print("no devices provisioned from this computer yet (see `hyperpi provision`)")
    if args.no_mdns:
        return 0
    if not peers:
        print(f"no hyperpi devices seen on the LAN in {args.timeout:g} s")
        return 0
    if devices:
        print()
    width = max(len(peer.name) for peer in peers)
    for peer in peers:
        print(f"{peer.name:<{width}}  {_addresses(peer)}  {len(peer.topics)}")
    return 0


def _addresses(peer: Peer) -> str:
    return ", ".join(f"{host}:{port}" for host, port in peer.endpoints()) or f"?:{peer.port}"


def _print_devices(devices: list[Device], peers: list[Peer], lan: bool) -> None:
    width = max(len("NAME"), *(len(d.name) for d in devices))
    board_width = max(len("BOARD"), *(len(d.board) for d in devices))
    header = f"{'NAME':<{width}}  {'BOARD':<{board_width}}  {'FEED KEY':<52}"
    print(header + "  ON THE LAN")
    last_seen = load_last_seen()
    for device in devices:
        line = f"{device.name:<{width}}  {device.board:<{board_width}}  {z32_encode(device.feed_key)}"
        seen = [_addresses(p) for p in peers if seen_as(device, p)] if lan else []
        if seen:
            line += "  now at " + ", ".join(seen)
            last_seen[device.name] = {"at": int(time.time()), "where": ", ".join(seen)}
        elif device.name in last_seen:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last_seen[device.name]["at"]))
            line += f"  {'not seen now; ' if lan else ''}last seen {when} at {last_seen[device.name]['where']}"
        else:
            line += "  not seen yet" if lan else "  never seen (browse without --no-mdns)"
        print(line)
    if lan:
        _save_last_seen(last_seen)


def load_last_seen() -> dict[str, dict]:
    """{device name: {"at": unix time, "where": "host:port, ..."}}; a missing or damaged file is empty."""
    try:
        data = json.loads((home.home_path() / LAST_SEEN_FILE).read_text())
        return {
            str(name): {"at": int(entry["at"]), "where": str(entry["where"])}
            for name, entry in data.items()
            if isinstance(entry, dict)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _save_last_seen(last_seen: dict[str, dict]) -> None:
    try:
        home.write_atomic(home.hyperpi_home() / LAST_SEEN_FILE, json.dumps(last_seen, sort_keys=True).encode())
    except (OSError, home.HomeError) as error:  # a listing still works on a read-only home
        print(f"hyperpi: cannot record where devices were seen: {error}", file=sys.stderr)


def seen_as(device: Device, peer: Peer) -> bool:
    """Whether an mDNS peer is this device: its instance name (name + hash of its Noise key),
    or the discovery key of its feed among the topics it serves."""
    from hyperpi.net.discovery import instance_name

    if device.noise_key is not None and peer.name == instance_name(device.name, device.noise_key):
        return True
    return discovery_key(device.feed_key) in peer.topics


def _show(device: Device, args: argparse.Namespace) -> int:
    from . import qr

    print(f"name:           {device.name}")
    print(f"board:          {device.board}")
    print(f"feed key:       {z32_encode(device.feed_key)}")
    print(f"discovery key:  {z32_encode(discovery_key(device.feed_key))}")
    if device.noise_key is not None:
        print(f"peer key:       {z32_encode(device.noise_key)}")
    if device.control_key is not None:
        print(f"owner feed:     {z32_encode(device.control_key)}")
    for name, key in device.follows:
        print(f"follows:        {name} {z32_encode(key)} (set at provisioning)")
    if args.png is not None:
        qr.write_png(qr.make_qr(device.feed_key), args.png)
        print(f"saved {args.png}")
    if args.qr:
        sys.stdout.write(qr.render_terminal(qr.make_qr(device.feed_key), qr.auto_style()))
    return 0


async def browse(seconds: float) -> list[Peer]:
    """Every peer resolved within `seconds` of listening."""
    from hyperpi.net.discovery import Discovery

    discovery = Discovery(port=None)
    await discovery.start()
    try:
        await asyncio.sleep(seconds)
        return discovery.peers()
    finally:
        await discovery.stop()
