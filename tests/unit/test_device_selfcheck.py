"""`hyperpi-device --check`: each item's ok and FAIL lines, on real parts where a laptop has them.

Device nodes are files in a fake /dev (their group and mode are real, the group names come from
a table); buttons and the panels' DC/backlight pins are gpiozero's mock pins; the panels are
luma's real ST7789 and SSD1306 drivers writing to the recording buses of test_device_drivers;
the mDNS item binds real UDP sockets. The CLI runs as a process on this machine, which is no Pi.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Button
from gpiozero.pins.mock import MockFactory, MockPin

from hyperpi.device import gpio, selfcheck
from hyperpi.device.boards import get_board
from hyperpi.device.config import EX_CONFIG, DeviceConfig
from hyperpi.device.selfcheck import CheckResult, Environment
from hyperpi.net.discovery import ipv4_interfaces

from .test_device_drivers import RecordingI2C, RecordingSPI

HAT = get_board("display-hat-mini")
OLED = get_board("oled-bonnet")
HEADLESS = get_board("headless")
# Made-up gids for the fake /dev: chown() to them needs root (CI runs as root).
GROUPS = {60001: "gpio", 60002: "spi", 60003: "i2c"}
NODE_GROUP = {"gpiochip0": 60001, "spidev0.1": 60002, "i2c-1": 60003}


def group_name(gid: int) -> str:
    return GROUPS.get(gid, "root" if gid == 0 else str(gid))


def fake_dev(tmp_path: Path, names: list[str], mode: int = 0o660, chown: bool = True) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in names:
        node = dev / name
        node.touch()
        node.chmod(mode)
        if chown:
            if os.geteuid() != 0:
                pytest.skip("giving the fake nodes other groups needs root")
            os.chown(node, -1, NODE_GROUP[name])
    return dev


def env(tmp_path: Path, **overrides: Any) -> Environment:
    """A machine with nothing on it: each test adds what it checks."""
    base: dict[str, Any] = {
        "dev_root": tmp_path / "no-dev",
        "model_file": tmp_path / "no-model",
        "timesync_file": tmp_path / "no-timesync",
        "group_name": group_name,
        "user": "pi",
        "frame_seconds": 0,
        "revision": lambda: (0xA02082, "the test"),
    }
    return Environment(**{**base, **overrides})


def config(board: str = "display-hat-mini", mdns: bool = False) -> DeviceConfig:
    return DeviceConfig(name="kitchen", board=board, mdns=mdns)


class SpiDev:
    """The spidev calls the SPI item makes; `fail` makes the transfer fail like a dead controller."""

    def __init__(self, fail: OSError | None = None) -> None:
        self.fail = fail
        self.mode = -1
        self.max_speed_hz = 0
        self.sent: list[list[int]] = []
        self.closed = False

    def xfer2(self, data: list[int]) -> list[int]:
        if self.fail is not None:
            raise self.fail
        self.sent.append(list(data))
        return [0] * len(data)

    def close(self) -> None:
        self.closed = True


class SMBus:
    """The smbus2 call the I2C item makes; `nack` makes every write unacknowledged."""

    def __init__(self, nack: int | None = None) -> None:
        self.nack = nack
        self.writes: list[tuple[int, int, int]] = []
        self.closed = False

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        if self.nack is not None:
            raise OSError(self.nack, os.strerror(self.nack))
        self.writes.append((address, register, value))

    def close(self) -> None:
        self.closed = True


class HeldPin(MockPin):
    """A pin whose button is held down (or shorted to GND): the switch beats the SoC's pull-up."""

    held = False

    def drive_high(self) -> None:
        if not self.held:
            super().drive_high()


# ---- board, devices ----------------------------------------------------------------------------


def test_board_names_the_profile_and_the_pi_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    (line,) = selfcheck.check_board(HAT, env(tmp_path, model_file=model))
    assert line == CheckResult("board", True, f"display-hat-mini ({HAT.description}); Raspberry Pi 4 Model B Rev 1.4")
    (line,) = selfcheck.check_board(HAT, env(tmp_path))
    assert line.ok and "(not a Raspberry Pi?)" in line.detail  # no model file is not a failure


def test_devices_ok_and_a_missing_spidev_names_the_overlay(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, ["gpiochip0"])
    lines = selfcheck.check_devices(HAT, env(tmp_path, dev_root=dev))
    assert lines == [
        CheckResult(f"device {dev}/gpiochip0", True, "group gpio, mode 0660, readable and writable by pi"),
        CheckResult(
            f"device {dev}/spidev0.1",
            False,
            f"{dev}/spidev0.1 missing; the hyperpi overlay is not applied: check that /boot/firmware/config.txt "
            "has dtoverlay=hyperpi and /boot/firmware/overlays/hyperpi.dtbo exists, then reboot",
        ),
    ]


def test_missing_i2c_node_names_i2c_dev(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, ["gpiochip0"])
    lines = selfcheck.check_devices(OLED, env(tmp_path, dev_root=dev))
    assert [line.item for line in lines] == [f"device {dev}/gpiochip0", f"device {dev}/i2c-1"]
    assert not lines[1].ok and "modprobe i2c-dev" in lines[1].detail and "hyperpi.conf" in lines[1].detail


def test_node_the_service_group_cannot_open_names_the_udev_rule(tmp_path: Path) -> None:
    # Owned by root:root 0600 (no udev rule): root running the check could open it, the service not.
    dev = fake_dev(tmp_path, ["gpiochip0", "spidev0.1"], mode=0o600, chown=False)
    lines = selfcheck.check_devices(HAT, env(tmp_path, dev_root=dev, group_name=lambda gid: "root"))
    assert [line.ok for line in lines] == [False, False]
    assert lines[1].detail == (
        "group root, mode 0600: the service's group 'spi' cannot open it; the udev rule "
        "/etc/udev/rules.d/60-hyperpi.rules is missing or not applied (`udevadm trigger`, or reboot)"
    )


def test_node_this_user_cannot_open_names_usermod(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, ["gpiochip0", "spidev0.1"])

    def refuse_spi(path: Path, mode: int) -> bool:  # the user is in 'gpio' but not in 'spi'
        return path.name != "spidev0.1"

    lines = selfcheck.check_devices(HAT, env(tmp_path, dev_root=dev, access=refuse_spi))
    assert lines[0].ok and not lines[1].ok
    assert "pi cannot read and write it" in lines[1].detail and "`usermod -aG spi pi`" in lines[1].detail


# ---- spi, i2c ----------------------------------------------------------------------------------


def test_spi_sends_one_byte_at_the_panel_speed(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path, ["spidev0.1"])
    bus = SpiDev()
    opened: list[tuple[int, int]] = []

    def opener(port: int, device: int) -> SpiDev:
        opened.append((port, device))
        return bus

    (line,) = selfcheck.check_spi(HAT, env(tmp_path, dev_root=dev, spi_opener=opener))
    assert line == CheckResult("spi", True, f"{dev}/spidev0.1 open, 1 byte sent at 32 MHz")
    assert opened == [(0, 1)] and bus.sent == [[0]] and bus.closed
    assert (bus.mode, bus.max_speed_hz) == (0, 32_000_000)


def test_spi_failures(tmp_path: Path) -> None:
    (line,) = selfcheck.check_spi(HAT, env(tmp_path))  # no node at all
    assert not line.ok and line.detail.startswith(f"{tmp_path}/no-dev/spidev0.1 missing; the hyperpi overlay")
    dev = fake_dev(tmp_path, ["spidev0.1"])
    dead = SpiDev(fail=OSError(errno.ETIMEDOUT, "Connection timed out"))
    (line,) = selfcheck.check_spi(HAT, env(tmp_path, dev_root=dev, spi_opener=lambda p, d: dead))
    assert line == CheckResult("spi", False, f"a 1-byte transfer on {dev}/spidev0.1 failed: Connection timed out")
    assert dead.closed

    def no_module(port: int, device: int) -> Any:
        raise ImportError("No module named 'spidev'")

    (line,) = selfcheck.check_spi(HAT, env(tmp_path, dev_root=dev, spi_opener=no_module))
    assert not line.ok and "python3-spidev" in line.detail


def test_i2c_panel_answers(tmp_path: Path) -> None:
    bus = SMBus()
    (line,) = selfcheck.check_i2c(OLED, env(tmp_path, i2c_opener=lambda port: bus))
    assert line == CheckResult("i2c", True, "panel answers at 0x3c on /dev/i2c-1")
    assert bus.writes == [(0x3C, 0x00, 0xE3)] and bus.closed  # command control byte, NOP


@pytest.mark.parametrize("code", [errno.EREMOTEIO, errno.ENXIO, errno.EIO])
def test_i2c_no_answer_names_address_and_bus(tmp_path: Path, code: int) -> None:
    bus = SMBus(nack=code)
    (line,) = selfcheck.check_i2c(OLED, env(tmp_path, i2c_opener=lambda port: bus))
    assert not line.ok and bus.closed
    assert line.detail.startswith("no device answers at 0x3c on /dev/i2c-1; check the bonnet is seated on pins 1-6")


def test_i2c_bus_missing(tmp_path: Path) -> None:
    def opener(port: int) -> Any:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    (line,) = selfcheck.check_i2c(OLED, env(tmp_path, i2c_opener=opener))
    assert not line.ok and line.detail.startswith("/dev/i2c-1 missing; the i2c-dev module is not loaded")


# ---- gpio, buttons -----------------------------------------------------------------------------


def test_gpio_reports_the_factory_chip_and_revision(tmp_path: Path) -> None:
    class Factory(MockFactory):  # named as gpio.lgpio_factory's subclass is
        _chip = 0

    lines, factory = selfcheck.check_gpio(env(tmp_path, factory_maker=Factory))
    try:
        assert lines == [
            CheckResult("gpio", True, "MockFactory on /dev/gpiochip0; board revision a02082 from the test")
        ]
    finally:
        factory.close()


def test_gpio_error_is_the_fail_line(tmp_path: Path) -> None:
    def no_chip() -> Any:
        raise gpio.GpioError("/dev/gpiochip0 does not exist (not a Raspberry Pi, or the GPIO driver is not loaded)")

    lines, factory = selfcheck.check_gpio(env(tmp_path, factory_maker=no_chip))
    assert factory is None
    assert lines == [
        CheckResult(
            "gpio",
            False,
            "/dev/gpiochip0 does not exist (not a Raspberry Pi, or the GPIO driver is not loaded)",
        )
    ]
    assert selfcheck.check_buttons(HAT, None) == [
        CheckResult("buttons", False, "not tested: no GPIO (see the gpio line)")
    ]


def test_buttons_released_at_idle() -> None:
    factory = MockFactory()
    try:
        assert selfcheck.check_buttons(HAT, factory) == [CheckResult("buttons", True, "A(5) B(6) X(16) Y(24) released")]
        Button(5, pin_factory=factory).close()  # the check released its pins
    finally:
        factory.close()


def test_a_held_button_fails_by_name() -> None:
    factory = MockFactory(pin_class=HeldPin)
    try:
        factory.pin(16).held = True
        (line,) = selfcheck.check_buttons(HAT, factory)
        assert line == CheckResult(
            "buttons",
            False,
            "X(16) pressed at idle: held down or shorted to ground, or the HAT is not seated",
        )
    finally:
        factory.close()


def test_all_buttons_low_means_no_pull_ups() -> None:
    factory = MockFactory(pin_class=HeldPin)
    try:
        for pin in (5, 6, 16, 24):
            factory.pin(pin).held = True
        (line,) = selfcheck.check_buttons(HAT, factory)
        assert not line.ok
        assert line.detail.startswith("all of A(5) B(6) X(16) Y(24) read pressed at idle: the pull-ups are not applied")
    finally:
        factory.close()


def test_a_button_on_a_pin_in_use_fails_with_one_line() -> None:
    factory = MockFactory()
    try:
        holder = Button(6, pin_factory=factory)
        (line,) = selfcheck.check_buttons(HAT, factory)
        assert not line.ok and line.detail.startswith("cannot use GPIO 6 for button B:")
        holder.close()
        Button(5, pin_factory=factory).close()  # A, opened before B failed, was released
    finally:
        factory.close()


# ---- display -----------------------------------------------------------------------------------


def test_display_sends_a_test_frame_to_the_st7789(tmp_path: Path) -> None:
    factory = MockFactory()
    bus = RecordingSPI()
    try:
        (line,) = selfcheck.check_display(HAT, factory, env(tmp_path, display_bus=bus))
    finally:
        factory.close()
    assert line.ok and line.detail.startswith("test frame sent to st7789 320x240 on /dev/spidev0.1")
    assert bus.opened == (0, 1)
    sent = bytes(byte for chunk in bus.written for byte in chunk)
    assert selfcheck.frame_image("RGB", (320, 240)).tobytes() in sent  # the whole frame, 3 bytes a pixel


def test_display_sends_a_test_frame_to_the_ssd1306(tmp_path: Path) -> None:
    bus = RecordingI2C()
    (line,) = selfcheck.check_display(OLED, None, env(tmp_path, display_bus=bus))
    assert line.ok and line.detail.startswith("test frame sent to ssd1306 128x64 on 0x3c on /dev/i2c-1")
    # luma clears the panel when it opens it and again at cleanup; the test frame is in between.
    assert len(bus.data) == 3 * 1024 and not any(bus.data[:1024]) and not any(bus.data[2048:])
    frame = bus.data[1024:2048]  # 8 pages of 8 rows, one byte a column, row 0 in bit 0
    assert all(frame[page * 128] == frame[page * 128 + 127] == 0xFF for page in range(8))  # side borders
    assert all(frame[x] & 0x01 and frame[7 * 128 + x] & 0x80 for x in range(128))  # top and bottom


def test_display_fails_with_one_line_when_the_panel_does_not_answer(tmp_path: Path) -> None:
    class Silent(RecordingI2C):
        def write_i2c_block_data(self, address: int, register: int, data: list[int]) -> None:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")

    (line,) = selfcheck.check_display(OLED, None, env(tmp_path, display_bus=Silent()))
    assert not line.ok and line.detail.startswith("cannot open the ssd1306 on 0x3c on /dev/i2c-1:")
    assert "\n" not in line.detail


def test_display_needs_gpio_for_the_st7789_and_nothing_headless(tmp_path: Path) -> None:
    (line,) = selfcheck.check_display(HAT, None, env(tmp_path))
    assert not line.ok and "need GPIO" in line.detail
    assert selfcheck.check_display(HEADLESS, None, env(tmp_path)) == [
        CheckResult("display", True, "none on this board")
    ]


# ---- network, mdns, clock ----------------------------------------------------------------------


def test_network(tmp_path: Path) -> None:
    found = env(tmp_path, addresses=lambda: [("wlan0", "192.168.1.5")])
    assert selfcheck.check_network(found) == [CheckResult("network", True, "wlan0 192.168.1.5")]
    (line,) = selfcheck.check_network(env(tmp_path, addresses=list))
    assert not line.ok and line.detail.startswith("no IPv4 address: check the Ethernet cable or the Wi-Fi")
    assert "networkctl status" in line.detail


def a_local_address() -> tuple[str, str]:
    found = ipv4_interfaces()
    return found[0] if found else ("lo", "127.0.0.1")


def test_mdns_shares_the_port_as_zeroconf_does(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as zeroconf_like:
        zeroconf_like.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        zeroconf_like.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        zeroconf_like.bind(("", 0))
        port = zeroconf_like.getsockname()[1]
        name, addr = a_local_address()
        (line,) = selfcheck.check_mdns(
            config(mdns=True), env(tmp_path, mdns_port=port, addresses=lambda: [(name, addr)])
        )
    assert line == CheckResult("mdns", True, f"UDP {port} bound, joined 224.0.0.251 on {name} {addr}")


def test_mdns_fails_when_a_program_holds_the_port_without_sharing(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hog:
        hog.bind(("", 0))
        port = hog.getsockname()[1]
        (line,) = selfcheck.check_mdns(
            config(mdns=True), env(tmp_path, mdns_port=port, addresses=lambda: [a_local_address()])
        )
    assert not line.ok and line.detail.startswith(f"cannot bind UDP port {port}: Address already in use")


def test_mdns_off_or_without_address(tmp_path: Path) -> None:
    assert selfcheck.check_mdns(config(mdns=False), env(tmp_path)) == [
        CheckResult("mdns", True, "off in the settings (mdns = false)")
    ]
    (line,) = selfcheck.check_mdns(config(mdns=True), env(tmp_path, addresses=list))
    assert not line.ok and "no IPv4 address" in line.detail


def test_clock(tmp_path: Path) -> None:
    (line,) = selfcheck.check_clock(env(tmp_path))
    assert not line.ok and line.detail.startswith("not synchronized yet: the Pi has no real-time clock")
    synced = tmp_path / "synchronized"
    synced.touch()
    (line,) = selfcheck.check_clock(env(tmp_path, timesync_file=synced))
    assert line.ok and line.detail.startswith("synchronized by NTP, now ") and line.detail.endswith(" UTC")


# ---- the whole run -----------------------------------------------------------------------------


def good_hat(tmp_path: Path) -> Environment:
    dev = fake_dev(tmp_path, ["gpiochip0", "spidev0.1"])
    synced = tmp_path / "synchronized"
    synced.touch()
    return env(
        tmp_path,
        dev_root=dev,
        timesync_file=synced,
        factory_maker=MockFactory,
        spi_opener=lambda port, device: SpiDev(),
        display_bus=RecordingSPI(),
        addresses=lambda: [("wlan0", "192.168.1.5")],
    )


def test_a_good_display_hat_mini_passes_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made: list[Any] = []

    def factory_maker() -> Any:
        made.append(MockFactory())
        return made[-1]

    environment = replace(good_hat(tmp_path), factory_maker=factory_maker)
    assert selfcheck.main(config(), HAT, environment) == 0
    out = capsys.readouterr().out.splitlines()
    dev = environment.dev_root
    assert [line.split(":")[0] for line in out] == [
        "ok    board",
        f"ok    device {dev}/gpiochip0",
        f"ok    device {dev}/spidev0.1",
        "ok    spi",
        "ok    gpio",
        "ok    buttons",
        "ok    display",
        "ok    network",
        "ok    mdns",
        "ok    clock",
        "check",
    ]
    assert out[-1] == "check: 10 ok, 0 failed"
    assert len(made) == 1 and made[0].pins == {}  # one factory, shared by the items, closed at the end


def test_an_unexpected_error_is_a_fail_line_not_a_traceback(tmp_path: Path) -> None:
    def broken() -> list[tuple[str, str]]:
        raise RuntimeError("netlink went away")

    results = selfcheck.run_checks(config(mdns=True), HEADLESS, env(tmp_path, addresses=broken))
    by_item = {r.item: r for r in results}
    assert by_item["network"] == CheckResult("network", False, "unexpected error: RuntimeError: netlink went away")
    assert not by_item["mdns"].ok and [r.item for r in results][-1] == "clock"


def test_format_results() -> None:
    text = selfcheck.format_results([CheckResult("a", True, "fine"), CheckResult("bb", False, "broken; fix it")])
    assert text == "ok    a: fine\nFAIL  bb: broken; fix it\ncheck: 1 ok, 1 failed"


def test_startup_summary_only_looks_at_nodes(tmp_path: Path) -> None:
    environment = good_hat(tmp_path)
    dev = environment.dev_root
    factory = MockFactory()
    try:
        assert selfcheck.startup_summary(HAT, factory, True, True, environment) == (
            f"hardware: board display-hat-mini; {dev}/gpiochip0 ok (group gpio); {dev}/spidev0.1 ok (group spi); "
            "gpio: MockFactory; display: st7789 320x240; buttons: 4"
        )
        assert factory.pins == {}  # no pin was touched
    finally:
        factory.close()
    (dev / "spidev0.1").unlink()
    summary = selfcheck.startup_summary(HAT, None, False, False, environment)
    assert summary == (
        f"hardware: board display-hat-mini; {dev}/gpiochip0 ok (group gpio); {dev}/spidev0.1 missing; "
        "gpio: none; display: st7789 320x240 not open; buttons: none; `hyperpi-device --check` says what to fix"
    )


# ---- the command -------------------------------------------------------------------------------


def run_device(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyperpi.device.main", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "NOTIFY_SOCKET": ""},
        timeout=120,
    )


@pytest.mark.skipif(os.path.exists("/dev/gpiochip0"), reason="this machine has GPIO; the test expects none")
def test_check_command_on_a_machine_without_gpio(tmp_path: Path) -> None:
    settings = tmp_path / "device.toml"
    settings.write_text(f'name = "kitchen"\nboard = "headless"\nstate_dir = "{tmp_path / "state"}"\n')
    r = run_device("--check", "--config", str(settings))
    assert r.returncode == 1, r
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [line[6:].split(":")[0] for line in lines[:-1]] == [
        "board",
        "device /dev/gpiochip0",
        "gpio",
        "buttons",
        "display",
        "network",
        "mdns",
        "clock",
    ]
    assert all(line[:6] in ("ok    ", "FAIL  ") for line in lines[:-1])
    (gpio_line,) = (line for line in lines if line.startswith("FAIL  gpio: "))
    assert "lgpio" in gpio_line or "/dev/gpiochip0" in gpio_line
    assert "ok    display: none on this board" in lines
    assert lines[-1] == f"check: {sum(line.startswith('ok') for line in lines)} ok, " + (
        f"{sum(line.startswith('FAIL') for line in lines)} failed"
    )
    assert not (tmp_path / "state").exists()  # a check leaves the service's state alone


def test_check_command_with_a_bad_settings_file(tmp_path: Path) -> None:
    r = run_device("--check", "--config", str(tmp_path / "absent.toml"))
    assert r.returncode == EX_CONFIG
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "absent.toml: no such file" in r.stderr
