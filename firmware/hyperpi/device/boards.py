"""Board profiles: which display a board carries and which GPIO pins its buttons use.

Boards are data, not code (as gpiozero makes hardware a pin factory): the service reads one
profile and takes the same code path on every board, in simulation too. Pins are BCM numbers.
Each profile cites the vendor's own code or guide the pins were checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

# What a button does on a short press and on a hold (see app.py for the actions).
Action = Literal["next", "prev", "send", "up", "down", "pair"]
ACTIONS: frozenset[str] = frozenset({"next", "prev", "send", "up", "down", "pair"})


@dataclass(frozen=True)
class ButtonSpec:
    name: str  # as printed on the board (A, B, X, Y, ...)
    pin: int  # BCM GPIO number; pressed pulls the pin low (all these boards wire buttons to GND)
    press: Action
    hold: Action = "pair"  # a long press on any button opens the pairing screen, unless noted
    # True: pressed pulls the pin low against the SoC's pull-up (every HAT here). None: no pull,
    # the line is driven and pressed reads high (the emulated test board's power-button line).
    pull_up: bool | None = True


@dataclass(frozen=True)
class DisplaySpec:
    driver: Literal["st7789", "ssd1306", "framebuffer"]
    width: int
    height: int
    mode: Literal["1", "RGB"]
    spi_port: int = 0
    spi_device: int = 0  # chip select: 0 = CE0, 1 = CE1
    gpio_dc: int | None = None
    gpio_backlight: int | None = None
    i2c_port: int = 1
    i2c_address: int = 0x3C
    rotate: int = 0  # luma rotation, in quarter turns
    fb_device: str = "/dev/fb0"


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    display: DisplaySpec | None
    buttons: tuple[ButtonSpec, ...]
    led_pins: tuple[int, int, int] | None = None  # RGB status LED (R, G, B), if any
    source: str = ""  # where the pin map was checked

    def with_pins(self, pins: dict[str, int]) -> Board:
        """The same board with some buttons moved to other pins (config `[buttons]`)."""
        return replace(self, buttons=tuple(replace(b, pin=pins.get(b.name, b.pin)) for b in self.buttons))


# Pimoroni Display HAT Mini: pins from Pimoroni's own driver, displayhatmini-python
# `library/displayhatmini/__init__.py` (BUTTON_A = 5, BUTTON_B = 6, BUTTON_X = 16, BUTTON_Y = 24,
# LED_R/G/B = 17/27/22, SPI_PORT 0, SPI_CS 1, SPI_DC 9, BACKLIGHT 13, 320x240) and the pinout at
# https://pinout.xyz/pinout/display_hat_mini
DISPLAY_HAT_MINI = Board(
    name="display-hat-mini",
    description="Pimoroni Display HAT Mini: ST7789 320x240 colour LCD, buttons A B X Y, RGB LED",
    display=DisplaySpec("st7789", 320, 240, "RGB", spi_port=0, spi_device=1, gpio_dc=9, gpio_backlight=13),
    buttons=(
        ButtonSpec("A", 5, "next"),
        ButtonSpec("B", 6, "send"),
        ButtonSpec("X", 16, "up"),
        ButtonSpec("Y", 24, "down"),
    ),
    led_pins=(17, 27, 22),
    source="github.com/pimoroni/displayhatmini-python library/displayhatmini/__init__.py",
)

# Adafruit Mini PiTFT 1.3" 240x240 (product 4484): Adafruit's guide "Adafruit Mini PiTFT 1.3",
# Python setup (learn.adafruit.com/adafruit-mini-pitft-135x240-color-tft-add-on-for-raspberry-pi/
# python-setup): CS = CE0, DC = D25, backlight D22, buttonA = D23 (top), buttonB = D24 (bottom).
# Two buttons only: holding the bottom one scrolls to older messages instead of pairing.
MINI_PITFT = Board(
    name="mini-pitft",
    description='Adafruit Mini PiTFT 1.3": ST7789 240x240 colour LCD, two buttons',
    display=DisplaySpec("st7789", 240, 240, "RGB", spi_port=0, spi_device=0, gpio_dc=25, gpio_backlight=22),
    buttons=(
        ButtonSpec("top", 23, "next", hold="pair"),
        ButtonSpec("bottom", 24, "send", hold="up"),
    ),
    source="learn.adafruit.com/adafruit-mini-pitft-135x240-color-tft-add-on-for-raspberry-pi/python-setup",
)

# Adafruit 128x64 OLED Bonnet (product 3531): Adafruit's guide "Adafruit 128x64 OLED Bonnet for
# Raspberry Pi", usage (learn.adafruit.com/adafruit-128x64-oled-bonnet-for-raspberry-pi/usage):
# SSD1306 on I2C bus 1 address 0x3C; button A = D5, B = D6, joystick L = D27, R = D23, U = D17,
# D = D22, centre C = D4.
OLED_BONNET = Board(
    name="oled-bonnet",
    description="Adafruit 128x64 OLED Bonnet: SSD1306 over I2C, joystick and buttons A/B",
    display=DisplaySpec("ssd1306", 128, 64, "1", i2c_port=1, i2c_address=0x3C),
    buttons=(
        ButtonSpec("A", 5, "next"),
        ButtonSpec("B", 6, "send"),
        ButtonSpec("up", 17, "up"),
        ButtonSpec("down", 22, "down"),
        ButtonSpec("left", 27, "prev"),
        ButtonSpec("right", 23, "next"),
        ButtonSpec("centre", 4, "send"),
    ),
    source="learn.adafruit.com/adafruit-128x64-oled-bonnet-for-raspberry-pi/usage",
)

# Any HDMI screen through the kernel framebuffer; two buttons wired from GPIO 5 and 6 to GND
# (move them with the config's [buttons] table).
HDMI = Board(
    name="hdmi",
    description="HDMI screen through /dev/fb0 (luma linux_framebuffer), buttons on GPIO 5 and 6",
    display=DisplaySpec("framebuffer", 640, 480, "RGB"),
    buttons=(ButtonSpec("next", 5, "next"), ButtonSpec("send", 6, "send", hold="up")),
    source="luma.core.device.linux_framebuffer; size read from the framebuffer at start",
)

HEADLESS = Board(
    name="headless",
    description="no screen; two buttons on GPIO 5 and 6 (next preset, send)",
    display=None,
    buttons=(ButtonSpec("next", 5, "next"), ButtonSpec("send", 6, "send", hold="up")),
)

# For the emulated-hardware test only (tests/image/test_boot.py): QEMU's `virt` machine pulses line 3
# of its PL061 GPIO controller (gpiochip0 there) high for ~100 ms on a QMP `system_powerdown`. The
# line has no pull resistor, which gpiozero allows only on a board without GPIO 3's I2C pull-up: the
# harness gives virt a Compute Module 3's revision (image/qemu_boot.py REVISIONS).
QEMU_VIRT_TEST = Board(
    name="qemu-virt-test",
    description="test only: QEMU virt's PL061 line 3 (the emulated power button) sends a message",
    display=None,
    buttons=(ButtonSpec("power", 3, "send", hold="send", pull_up=None),),
    source="QEMU hw/arm/virt.c: the power button is PL061 GPIO 3, pulsed by system_powerdown",
)

BOARDS: dict[str, Board] = {
    b.name: b for b in (DISPLAY_HAT_MINI, MINI_PITFT, OLED_BONNET, HDMI, HEADLESS, QEMU_VIRT_TEST)
}


def get_board(name: str) -> Board:
    """The profile called `name`; KeyError names the boards there are."""
    try:
        return BOARDS[name]
    except KeyError:
        raise KeyError(f"unknown board {name!r}; boards: {', '.join(BOARDS)}") from None
