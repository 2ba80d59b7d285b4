"""The real luma driver classes (ssd1306, st7789) with each board's wiring: a frame goes out as
the panel's bytes, and the DC and backlight pins move, on gpiozero's mock pins.

The SPI and I2C buses are recording stand-ins with the spidev / smbus2 methods luma calls:
they capture the bytes a panel would receive, like luma's own capture devices.
"""

from __future__ import annotations

from typing import Any

from gpiozero.pins.mock import MockFactory
from PIL import Image, ImageDraw

from hyperpi.device.boards import get_board
from hyperpi.device.display import Display, open_device


class RecordingSPI:
    """What luma and the display call on a `spidev.SpiDev`."""

    def __init__(self) -> None:
        self.opened: tuple[int, int] | None = None
        self.max_speed_hz = 0
        self.mode = 0
        self.written: list[list[int]] = []

    def open(self, port: int, device: int) -> None:
        self.opened = (port, device)

    def writebytes2(self, data: list[int]) -> None:  # the display uses this one (display.py)
        self.written.append(list(data))

    def close(self) -> None:
        pass


class RecordingI2C:
    """What luma calls on an `smbus2.SMBus` it did not open itself."""

    def __init__(self) -> None:
        self.commands: list[tuple[int, int, list[int]]] = []
        self.data = bytearray()

    def write_i2c_block_data(self, address: int, register: int, data: list[int]) -> None:
        if register == 0x40:  # the SSD1306's data control byte
            self.data.extend(data)
        else:
            self.commands.append((address, register, list(data)))

    def close(self) -> None:
        pass


def test_oled_bonnet_sends_a_1bit_frame_over_i2c() -> None:
    bus = RecordingI2C()
    device = open_device(get_board("oled-bonnet"), bus=bus)
    assert {a for a, _, _ in bus.commands} == {0x3C}  # the Bonnet's address
    bus.data.clear()
    display = Display(device, min_interval=0)
    frame = Image.new("1", (128, 64))
    ImageDraw.Draw(frame).rectangle((0, 0, 7, 7), fill=1)
    assert display.show(frame)
    assert len(bus.data) == 128 * 64 // 8  # one bit per pixel, pages of 8 rows
    assert bus.data.count(0xFF) == 8  # the 8x8 square: 8 columns of a full page byte
    assert display.show(frame) is False and len(bus.data) == 1024  # unchanged: nothing sent


def pin_states(factory: Any, pins: list[int]) -> dict[int, bool]:
    return {p: factory.pin(p).state for p in pins}


def test_display_hat_mini_sends_rgb_over_spi_ce1_with_backlight_on() -> None:
    factory = MockFactory()
    bus = RecordingSPI()
    device = open_device(get_board("display-hat-mini"), pin_factory=factory, bus=bus)
    assert bus.opened == (0, 1)  # SPI0, CE1 (displayhatmini: SPI_CS = 1)
    assert factory.pin(13).state is True  # backlight (BACKLIGHT = 13) switched on
    assert factory.pin(9).function == "output"  # DC (SPI_DC = 9)
    sent_before = sum(len(w) for w in bus.written)
    Display(device, min_interval=0).show(Image.new("RGB", (320, 240), (255, 0, 0)))
    pixels = sum(len(w) for w in bus.written) - sent_before
    assert pixels >= 320 * 240 * 3  # 18-bit colour: 3 bytes a pixel, plus window commands
    assert factory.pin(9).state is True  # left in data mode after the pixels


def test_mini_pitft_uses_ce0_dc25_backlight22() -> None:
    factory = MockFactory()
    bus = RecordingSPI()
    open_device(get_board("mini-pitft"), pin_factory=factory, bus=bus)
    assert bus.opened == (0, 0)
    assert factory.pin(22).state is True and factory.pin(25).function == "output"
