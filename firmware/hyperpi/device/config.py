"""The device's settings file (`/etc/hyperpi/device.toml`): load, validate, report mistakes.

Every mistake is one line naming the file and the key, and the service exits with EX_CONFIG (78,
sysexits.h) so systemd shows the cause without a traceback. Unknown keys are errors too: a typo
such as `preset` for `presets` would otherwise be ignored silently on a device with no keyboard.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperpi.hypercore.keys import parse_key
from hyperpi.net.address import DEFAULT_PORT, parse_address

from .boards import BOARDS

EX_CONFIG = 78  # sysexits.h: "something was found in an unconfigured or misconfigured state"
DEFAULT_CONFIG = Path("/etc/hyperpi/device.toml")
DEFAULT_STATE_DIR = Path("/var/lib/hyperpi")

MAX_NAME_CHARS = 32  # a name must fit the status line of a 128 px wide OLED with room to spare
MAX_PRESETS = 32  # cycling through more than this with one button is no longer usable
MAX_PRESET_CHARS = 140  # a preset is a short canned message, not a letter
DEFAULT_PRESETS = ("Hello!", "On my way", "Yes", "No", "Call me", "Dinner is ready")

_KNOWN_KEYS = {
    "name", "board", "presets", "follow", "owner", "listen_host", "listen_port", "mdns", "peers", "state_dir",
    "buttons",
}  # fmt: skip


class ConfigError(Exception):
    """A mistake in the settings file; str() is the one line to print."""

    exit_code = EX_CONFIG


@dataclass(frozen=True)
class Follow:
    name: str
    key: bytes


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    board: str
    presets: tuple[str, ...] = DEFAULT_PRESETS
    follows: tuple[Follow, ...] = ()
    owner: bytes | None = None  # key of the owner's control feed
    listen_port: int = DEFAULT_PORT
    listen_host: str = "0.0.0.0"  # every interface; "127.0.0.1" keeps a simulated device on this machine
    mdns: bool = True  # find peers and announce feeds on the LAN; off: static `peers` only
    peers: tuple[tuple[str, int], ...] = ()
    state_dir: Path = DEFAULT_STATE_DIR
    buttons: dict[str, int] = field(default_factory=dict)  # button name -> BCM pin override
    source: Path | None = None


def load_config(path: Path = DEFAULT_CONFIG) -> DeviceConfig:
    """Read and check the settings file; ConfigError (one line) on any problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; copy firmware/device.toml.example there") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], source: Path) -> DeviceConfig:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}': {problem}")

    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(_KNOWN_KEYS))})")

    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise fail("name", f"must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    if not name.isprintable():
        raise fail("name", "must not contain control characters")

    board = data.get("board", "headless")
    if board not in BOARDS:
        raise fail("board", f"unknown board {board!r}; boards: {', '.join(BOARDS)}")

    presets = data.get("presets", list(DEFAULT_PRESETS))
    if not isinstance(presets, list) or not 1 <= len(presets) <= MAX_PRESETS:
        raise fail("presets", f"must be a list of 1 to {MAX_PRESETS} strings")
    for p in presets:
        if not isinstance(p, str) or not p.strip() or len(p) > MAX_PRESET_CHARS or not p.isprintable():
            raise fail("presets", f"each preset must be printable text of 1 to {MAX_PRESET_CHARS} characters")

    follows = []
    raw_follows = data.get("follow", [])
    if not isinstance(raw_follows, list):
        raise fail("follow", "must be an array of tables: [[follow]] name = ... key = ...")
    for i, f in enumerate(raw_follows):
        if not isinstance(f, dict) or set(f) - {"name", "key"}:
            raise fail(f"follow[{i}]", "must have only 'name' and 'key'")
        fname = f.get("name")
        if not isinstance(fname, str) or not fname.strip() or len(fname) > MAX_NAME_CHARS:
            raise fail(f"follow[{i}].name", f"must be a non-empty string of at most {MAX_NAME_CHARS} characters")
        follows.append(Follow(fname, _key(f.get("key"), f"follow[{i}].key", fail)))

    owner = data.get("owner")
    owner_key = None if owner is None else _key(owner, "owner", fail)

    port = data.get("listen_port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise fail("listen_port", "must be a port number from 0 to 65535 (0 picks a free one)")

    listen_host = data.get("listen_host", "0.0.0.0")
    if not isinstance(listen_host, str) or not listen_host or not listen_host.isprintable():
        raise fail("listen_host", 'must be an address to listen on, e.g. "0.0.0.0" or "127.0.0.1"')

    mdns = data.get("mdns", True)
    if not isinstance(mdns, bool):
        raise fail("mdns", "must be true or false")

    peers = []
    raw_peers = data.get("peers", [])
    if not isinstance(raw_peers, list):
        raise fail("peers", 'must be a list of "host:port" strings')
    for p in raw_peers:
        if not isinstance(p, str):
            raise fail("peers", f'{p!r} is not a "host:port" string')
        try:
            peers.append(parse_address(p))
        except ValueError as error:
            raise fail("peers", str(error)) from None

    state_dir = data.get("state_dir", str(DEFAULT_STATE_DIR))
    if not isinstance(state_dir, str) or not state_dir:
        raise fail("state_dir", "must be a directory path")

    buttons = data.get("buttons", {})
    names = {b.name for b in BOARDS[board].buttons}
    if not isinstance(buttons, dict):
        raise fail("buttons", "must be a table of button name = BCM pin")
    for bname, pin in buttons.items():
        if bname not in names:
            raise fail(f"buttons.{bname}", f"board {board} has no such button (it has {', '.join(sorted(names))})")
        if not isinstance(pin, int) or isinstance(pin, bool) or not 0 <= pin <= 27:
            raise fail(f"buttons.{bname}", "must be a BCM GPIO number from 0 to 27")

    return DeviceConfig(
        name=name.strip(),
        board=board,
        presets=tuple(p.strip() for p in presets),
        follows=tuple(follows),
        owner=owner_key,
        listen_port=port,
        listen_host=listen_host,
        mdns=mdns,
        peers=tuple(peers),
        state_dir=Path(state_dir),
        buttons=dict(buttons),
        source=source,
    )


def _key(value: Any, key: str, fail: Any) -> bytes:
    if not isinstance(value, str):
        raise fail(key, "must be a key string (z-base-32 or hex)")
    try:
        return parse_key(value)
    except ValueError as e:
        raise fail(key, str(e)) from None
