"""`hyperpi-device --check`: the hardware and network self-test, for a Pi whose screen stays dark.

Each item is a small function returning `CheckResult`s; `run_checks` runs the items the board
needs and turns any exception into a FAIL line, so the check never ends in a traceback. Every
path and hardware opener sits in `Environment`, with the real ones as defaults, so the tests run
the same functions on any Linux machine. The GPIO item takes the service's own factory code path
(`gpio.pin_factory`); the buttons and display items then use that factory, as the service does.

`startup_summary` is the service's cheap version: it only stats device nodes, never opens them.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hyperpi.net.discovery import ipv4_interfaces

from . import gpio
from .boards import Board
from .config import DeviceConfig

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
TIMESYNC_FILE = Path("/run/systemd/timesync/synchronized")  # systemd-timesyncd touches it on sync
UDEV_RULE = "/etc/udev/rules.d/60-hyperpi.rules"
SERVICE_USER = "hyperpi"  # the unit's User=, with SupplementaryGroups=gpio spi i2c video
FRAME_SECONDS = 3.0  # how long the test frame stays up: long enough to look at the screen
SETTLE_SECONDS = 0.01  # lets a freshly pulled-up input line settle before it is read
# An I2C write no device acknowledges: ENXIO (i2c-bcm2835), EREMOTEIO (most drivers), EIO.
NO_ANSWER = {errno.ENXIO, errno.EREMOTEIO, errno.EIO}
OVERLAY_FIX = (
    "the hyperpi overlay is not applied: check that /boot/firmware/config.txt has dtoverlay=hyperpi "
    "and /boot/firmware/overlays/hyperpi.dtbo exists, then reboot"
)
I2C_FIX = (
    "the i2c-dev module is not loaded (it is listed in /etc/modules-load.d/hyperpi.conf; "
    f"try `modprobe i2c-dev`), or {OVERLAY_FIX}"
)
BUSY_HINT = "; is the service running? stop it first: `systemctl stop hyperpi-device`"


@dataclass(frozen=True)
class CheckResult:
    item: str
    ok: bool
    detail: str


def _real_factory() -> Any:
    return gpio.pin_factory(simulate=False)  # exactly the service's call


def _open_spidev(port: int, device: int) -> Any:
    import spidev  # type: ignore[import-not-found]  # python3-spidev on the image; Linux only

    bus = spidev.SpiDev()
    bus.open(port, device)
    return bus


def _open_smbus(port: int) -> Any:
    import smbus2

    return smbus2.SMBus(port)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


@dataclass(frozen=True)
class Environment:
    """Everything the checks touch; the defaults are the real machine."""

    dev_root: Path = Path("/dev")
    model_file: Path = gpio.MODEL_FILE
    timesync_file: Path = TIMESYNC_FILE
    factory_maker: Callable[[], Any] = _real_factory
    revision: Callable[[], tuple[int, str]] = gpio.board_revision
    spi_opener: Callable[[int, int], Any] = _open_spidev
    i2c_opener: Callable[[int], Any] = _open_smbus
    display_bus: Any = None  # an spidev/smbus-like object for luma; None: luma opens the real bus
    addresses: Callable[[], list[tuple[str, str]]] = ipv4_interfaces
    mdns_port: int = MDNS_PORT
    access: Callable[[Path, int], bool] = os.access  # root passes any mode; tests inject a refusal
    group_name: Callable[[int], str] = _group_name
    user: str = field(default_factory=_user_name)
    frame_seconds: float = FRAME_SECONDS


# ---- device nodes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str  # under /dev
    group: str  # the group the udev rule gives it, one of the service's SupplementaryGroups
    missing_fix: str


def needed_nodes(board: Board) -> list[Node]:
    nodes = []
    if board.buttons:
        nodes.append(Node("gpiochip0", "gpio", "this is not a Raspberry Pi, or its GPIO driver is not loaded"))
    spec = board.display
    if spec is not None and spec.driver == "st7789":
        nodes.append(Node(f"spidev{spec.spi_port}.{spec.spi_device}", "spi", OVERLAY_FIX))
    if spec is not None and spec.driver == "ssd1306":
        nodes.append(Node(f"i2c-{spec.i2c_port}", "i2c", I2C_FIX))
    if spec is not None and spec.driver == "framebuffer":
        nodes.append(
            Node(
                Path(spec.fb_device).name,
                "video",
                "no framebuffer: the HDMI (vc4) driver did not start; connect the screen before "
                "power-on and look at `dmesg | grep -i vc4`",
            )
        )
    return nodes


def _node_state(node: Node, env: Environment) -> tuple[str, str]:
    """('ok' | 'missing' | 'wrong group' | 'no access', facts such as 'group spi, mode 0660')."""
    path = env.dev_root / node.name
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing", ""
    except OSError as e:  # e.g. a /dev this user cannot search
        return "no access", f"stat: {e.strerror}"
    group, mode = env.group_name(st.st_gid), st.st_mode & 0o777
    facts = f"group {group}, mode {mode:04o}"
    # The service runs as its own user with the hardware groups: group rw (or world rw) must allow it.
    if not ((group == node.group and mode & 0o060 == 0o060) or mode & 0o006 == 0o006):
        return "wrong group", facts
    if not env.access(path, os.R_OK | os.W_OK):
        return "no access", facts
    return "ok", facts


def _access_fix(group: str, user: str) -> str:
    return (
        f"add the user to the '{group}' group: `usermod -aG {group} {user}`, then log in again "
        f"(the service user {SERVICE_USER} has it already)"
    )


def check_devices(board: Board, env: Environment) -> list[CheckResult]:
    results = []
    for node in needed_nodes(board):
        path = env.dev_root / node.name
        state, facts = _node_state(node, env)
        item = f"device {path}"
        if state == "ok":
            results.append(CheckResult(item, True, f"{facts}, readable and writable by {env.user}"))
        elif state == "missing":
            results.append(CheckResult(item, False, f"{path} missing; {node.missing_fix}"))
        elif state == "wrong group":
            results.append(
                CheckResult(
                    item,
                    False,
                    f"{facts}: the service's group '{node.group}' cannot open it; the udev rule {UDEV_RULE} "
                    "is missing or not applied (`udevadm trigger`, or reboot)",
                )
            )
        else:
            results.append(
                CheckResult(
                    item,
                    False,
                    f"{facts}: {env.user} cannot read and write it; {_access_fix(node.group, env.user)}",
                )
            )
    return results


# ---- items -------------------------------------------------------------------------------------


def check_board(board: Board, env: Environment) -> list[CheckResult]:
    detail = f"{board.name} ({board.description})"
    try:
        model = env.model_file.read_bytes().rstrip(b"\0").decode(errors="replace")
        detail += f"; {model}"
    except OSError:  # not a failure: a laptop or a board without a device tree
        detail += f"; no {env.model_file} (not a Raspberry Pi?)"
    return [CheckResult("board", True, detail)]


def check_spi(board: Board, env: Environment) -> list[CheckResult]:
    from .display import SPI_SPEED_HZ

    spec = board.display
    assert spec is not None
    path = env.dev_root / f"spidev{spec.spi_port}.{spec.spi_device}"
    if not path.exists():
        return [CheckResult("spi", False, f"{path} missing; {OVERLAY_FIX}")]
    try:
        bus = env.spi_opener(spec.spi_port, spec.spi_device)
    except ImportError as e:
        return [
            CheckResult(
                "spi",
                False,
                f"no spidev module ({e}); the image ships python3-spidev, elsewhere `pip install spidev`",
            )
        ]
    except PermissionError:
        return [CheckResult("spi", False, f"{path}: permission denied; {_access_fix('spi', env.user)}")]
    except OSError as e:
        return [CheckResult("spi", False, f"cannot open {path}: {e.strerror or e}")]
    try:
        bus.mode = 0
        bus.max_speed_hz = SPI_SPEED_HZ
        # One zero byte: the controller clocks it out or reports an error. The panel is write-only,
        # so SPI cannot tell whether it listens; the display item shows a frame for that.
        bus.xfer2([0x00])
    except OSError as e:
        return [CheckResult("spi", False, f"a 1-byte transfer on {path} failed: {e.strerror or e}")]
    finally:
        bus.close()
    return [CheckResult("spi", True, f"{path} open, 1 byte sent at {SPI_SPEED_HZ // 1_000_000} MHz")]


def check_i2c(board: Board, env: Environment) -> list[CheckResult]:
    spec = board.display
    assert spec is not None
    where = f"0x{spec.i2c_address:02x} on /dev/i2c-{spec.i2c_port}"
    try:
        bus = env.i2c_opener(spec.i2c_port)
    except ImportError as e:
        return [CheckResult("i2c", False, f"no smbus2 module ({e}); `pip install smbus2`")]
    except FileNotFoundError:
        return [CheckResult("i2c", False, f"/dev/i2c-{spec.i2c_port} missing; {I2C_FIX}")]
    except PermissionError:
        return [
            CheckResult("i2c", False, f"/dev/i2c-{spec.i2c_port}: permission denied; {_access_fix('i2c', env.user)}")
        ]
    except OSError as e:
        return [CheckResult("i2c", False, f"cannot open /dev/i2c-{spec.i2c_port}: {e.strerror or e}")]
    try:
        bus.write_byte_data(spec.i2c_address, 0x00, 0xE3)  # control byte "command", SSD1306 NOP
    except OSError as e:
        if e.errno in NO_ANSWER:
            return [
                CheckResult(
                    "i2c",
                    False,
                    f"no device answers at {where}; check the bonnet is seated on pins 1-6 "
                    "(SDA on GPIO 2, SCL on GPIO 3) and nothing else on the header shorts them",
                )
            ]
        return [CheckResult("i2c", False, f"writing to {where} failed: {e.strerror or e}")]
    finally:
        bus.close()
    return [CheckResult("i2c", True, f"panel answers at {where}")]


def _gpiozero_class(factory: Any) -> str:
    # gpio.lgpio_factory subclasses LGPIOFactory; name gpiozero's class, not the local one.
    for cls in type(factory).__mro__:
        if cls.__module__.startswith("gpiozero"):
            return cls.__name__
    return type(factory).__name__


def check_gpio(env: Environment) -> tuple[list[CheckResult], Any]:
    """The GPIO item and the factory it made (None when it failed), for buttons and display."""
    try:
        factory = env.factory_maker()
    except gpio.GpioError as e:
        return [CheckResult("gpio", False, str(e))], None
    chip = getattr(factory, "_chip", None)  # LGPIOFactory keeps the chip it opened here
    where = f"on /dev/gpiochip{chip}" if chip is not None else "(no GPIO chip)"
    try:
        code, source = env.revision()
    except gpio.GpioError as e:
        return [CheckResult("gpio", False, f"{_gpiozero_class(factory)} {where}, but {e}")], factory
    return [
        CheckResult("gpio", True, f"{_gpiozero_class(factory)} {where}; board revision {code:06x} from {source}")
    ], factory


def check_buttons(board: Board, factory: Any) -> list[CheckResult]:
    if factory is None:
        return [CheckResult("buttons", False, "not tested: no GPIO (see the gpio line)")]
    from .buttons import make_button

    buttons: list[Any] = []
    pressed: list[str] = []
    try:
        for spec in board.buttons:
            label = f"{spec.name}({spec.pin})"
            try:
                button = make_button(spec, factory)
            except Exception as e:  # noqa: BLE001 - lgpio's busy pin, gpiozero's invalid pin: one line
                hint = BUSY_HINT if "busy" in str(e).lower() else ""
                return [CheckResult("buttons", False, f"cannot use GPIO {spec.pin} for button {spec.name}: {e}{hint}")]
            buttons.append(button)
            time.sleep(SETTLE_SECONDS)
            if button.is_pressed:
                pressed.append(label)
    finally:
        for button in buttons:
            gpio.close_quietly(button.close, "a button")
    labels = " ".join(f"{s.name}({s.pin})" for s in board.buttons)
    if len(pressed) > 1 and len(pressed) == len(board.buttons):
        # Every line low at once is rarely every finger: the pulls did not take effect.
        return [
            CheckResult(
                "buttons",
                False,
                f"all of {labels} read pressed at idle: the pull-ups are not applied (a GPIO driver without "
                "bias support, e.g. an emulator) or something on the header holds the lines low",
            )
        ]
    if pressed:
        return [
            CheckResult(
                "buttons",
                False,
                f"{' '.join(pressed)} pressed at idle: held down or shorted to ground, or the HAT is not seated",
            )
        ]
    return [CheckResult("buttons", True, f"{labels} released")]


def _display_location(board: Board) -> str:
    spec = board.display
    assert spec is not None
    if spec.driver == "st7789":
        return f"/dev/spidev{spec.spi_port}.{spec.spi_device}"
    if spec.driver == "ssd1306":
        return f"0x{spec.i2c_address:02x} on /dev/i2c-{spec.i2c_port}"
    return spec.fb_device


def frame_image(mode: str, size: tuple[int, int]) -> Any:
    """A border and the words "hyperpi check": easy to recognise on any of the panels."""
    from PIL import Image, ImageDraw

    image = Image.new(mode, size)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline="white")
    draw.text((6, size[1] // 2 - 6), "hyperpi check", fill="white")
    return image


def check_display(board: Board, factory: Any, env: Environment) -> list[CheckResult]:
    spec = board.display
    if spec is None:
        return [CheckResult("display", True, "none on this board")]
    where = _display_location(board)
    if spec.driver == "st7789" and factory is None:
        return [
            CheckResult(
                "display",
                False,
                "not tested: the panel's DC and backlight pins need GPIO (see the gpio line)",
            )
        ]
    from .display import open_device

    try:
        device = open_device(board, pin_factory=factory, bus=env.display_bus)
    except Exception as e:  # noqa: BLE001 - luma's DeviceNotFoundError, busy pins, no spidev module
        hint = BUSY_HINT if "busy" in str(e).lower() else ""
        return [CheckResult("display", False, f"cannot open the {spec.driver} on {where}: {e}{hint}")]
    try:
        device.display(frame_image(device.mode, device.size))
        time.sleep(env.frame_seconds)  # time to look: cleanup below switches the panel off
    except Exception as e:  # noqa: BLE001 - an I2C NACK or SPI error from luma, as one line
        return [CheckResult("display", False, f"sending a frame to the {spec.driver} on {where} failed: {e}")]
    finally:
        gpio.close_quietly(device.cleanup, "the display")
    size = f"{device.width}x{device.height}"
    return [
        CheckResult(
            "display",
            True,
            f"test frame sent to {spec.driver} {size} on {where} (shown for {env.frame_seconds:g} s: "
            "a dark screen now means the panel or its backlight wiring)",
        )
    ]


def check_network(env: Environment) -> list[CheckResult]:
    found = env.addresses()
    if not found:
        return [
            CheckResult(
                "network",
                False,
                "no IPv4 address: check the Ethernet cable or the Wi-Fi settings "
                "(hyperpi provision --wifi-ssid ...), then `networkctl status`",
            )
        ]
    return [CheckResult("network", True, ", ".join(f"{name} {addr}" for name, addr in found))]


def check_mdns(config: DeviceConfig, env: Environment) -> list[CheckResult]:
    if not config.mdns:
        return [CheckResult("mdns", True, "off in the settings (mdns = false)")]
    found = env.addresses()
    if not found:
        return [CheckResult("mdns", False, "not tested: no IPv4 address (see the network line)")]
    name, addr = found[0]
    # Shared as python-zeroconf shares it, so a running service (or avahi) does not make this fail.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("", env.mdns_port))
        except OSError as e:
            return [
                CheckResult(
                    "mdns",
                    False,
                    f"cannot bind UDP port {env.mdns_port}: {e.strerror or e} (a program holds it without "
                    f"sharing; `ss -ulpn sport = :{env.mdns_port}` names it)",
                )
            ]
        try:
            membership = socket.inet_aton(MDNS_GROUP) + socket.inet_aton(addr)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError as e:
            return [CheckResult("mdns", False, f"cannot join {MDNS_GROUP} on {name} {addr}: {e.strerror or e}")]
    return [CheckResult("mdns", True, f"UDP {env.mdns_port} bound, joined {MDNS_GROUP} on {name} {addr}")]


def check_clock(env: Environment) -> list[CheckResult]:
    if env.timesync_file.exists():
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return [CheckResult("clock", True, f"synchronized by NTP, now {now}")]
    return [
        CheckResult(
            "clock",
            False,
            "not synchronized yet: the Pi has no real-time clock; messages will carry wrong times until "
            "timesyncd reaches an NTP server (check the network, `timedatectl timesync-status`)",
        )
    ]


# ---- running and printing ----------------------------------------------------------------------


def _guarded(item: str, check: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    try:
        return check()
    except Exception as e:  # noqa: BLE001 - never a traceback: an unexpected error is a FAIL line
        return [CheckResult(item, False, f"unexpected error: {type(e).__name__}: {e}")]


def run_checks(config: DeviceConfig, board: Board, env: Environment | None = None) -> list[CheckResult]:
    """Every item that applies to `board`, in the order a person would fix them."""
    env = env or Environment()
    results = _guarded("board", lambda: check_board(board, env))
    results += _guarded("devices", lambda: check_devices(board, env))
    driver = board.display.driver if board.display is not None else None
    if driver == "st7789":
        results += _guarded("spi", lambda: check_spi(board, env))
    if driver == "ssd1306":
        results += _guarded("i2c", lambda: check_i2c(board, env))

    factory = None
    if board.buttons or driver == "st7789":

        def gpio_item() -> list[CheckResult]:
            nonlocal factory
            lines, factory = check_gpio(env)
            return lines

        results += _guarded("gpio", gpio_item)
    try:
        if board.buttons:
            results += _guarded("buttons", lambda: check_buttons(board, factory))
        results += _guarded("display", lambda: check_display(board, factory, env))
    finally:
        if factory is not None:
            gpio.close_quietly(factory.close, "the GPIO pins")
    results += _guarded("network", lambda: check_network(env))
    results += _guarded("mdns", lambda: check_mdns(config, env))
    results += _guarded("clock", lambda: check_clock(env))
    return results


def format_results(results: list[CheckResult]) -> str:
    """One line per item, then `check: N ok, M failed`."""
    lines = [f"{'ok' if r.ok else 'FAIL':<6}{r.item}: {r.detail}" for r in results]
    failed = sum(not r.ok for r in results)
    lines.append(f"check: {len(results) - failed} ok, {failed} failed")
    return "\n".join(lines)


def startup_summary(
    board: Board, factory: Any, display_ok: bool, buttons_ok: bool, env: Environment | None = None
) -> str:
    """The service's one-line hardware summary. It only stats device nodes: the service holds
    them open already, and re-opening the panel would redraw it."""
    env = env or Environment()
    parts = [f"board {board.name}"]
    healthy = True
    for node in needed_nodes(board):
        state, _ = _node_state(node, env)
        healthy &= state == "ok"
        parts.append(f"{env.dev_root / node.name} {state}" + (f" (group {node.group})" if state == "ok" else ""))
    parts.append(f"gpio: {_gpiozero_class(factory)}" if factory is not None else "gpio: none")
    spec = board.display
    if spec is None:
        parts.append("display: none")
    else:
        size = spec.fb_device if spec.driver == "framebuffer" else f"{spec.width}x{spec.height}"
        parts.append(f"display: {spec.driver} {size}" + ("" if display_ok else " not open"))
        healthy &= display_ok
    if board.buttons:
        parts.append(f"buttons: {len(board.buttons)}" if buttons_ok else "buttons: none")
        healthy &= buttons_ok and factory is not None
    return "hardware: " + "; ".join(parts) + ("" if healthy else "; `hyperpi-device --check` says what to fix")


def main(config: DeviceConfig, board: Board, env: Environment | None = None) -> int:
    """`hyperpi-device --check`: print the results; 0 when nothing failed, else 1."""
    try:
        results = run_checks(config, board, env)
    except KeyboardInterrupt:
        print("check: interrupted", flush=True)
        return 130
    print(format_results(results), flush=True)
    return 0 if all(r.ok for r in results) else 1
