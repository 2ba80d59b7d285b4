"""The screen: a board profile's luma device, shown only on change and at a bounded rate.

luma drives the panels (`ssd1306` over I2C, `st7789` over SPI, `linux_framebuffer` for HDMI);
its `dummy` device stands in for all of them in tests and simulation, holding the last frame
as a PIL image. Frames come from render.py and never know which device shows them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from .boards import Board
from .gpio import close_quietly
from .render import Screen

log = logging.getLogger("hyperpi.device")

# A full 320x240 RGB frame over SPI takes about 40 ms at luma's 32 MHz and a 128x64 frame over
# 400 kHz I2C about 25 ms: ten frames a second leaves the CPU mostly idle on a Pi Zero 2 W.
MIN_FRAME_INTERVAL = 0.1
SPI_SPEED_HZ = 32_000_000  # luma's fastest documented rate for the ST7789


class GpioOutputs:
    """The RPi.GPIO calls luma makes for the DC, reset and backlight pins, done with gpiozero.

    So one GPIO library (gpiozero, lgpio underneath on current Pi OS kernels) drives both the
    buttons and the display on every Pi model, and tests drive both with gpiozero's mock pins.
    """

    BCM, OUT, IN, LOW, HIGH = 11, 0, 1, 0, 1

    def __init__(self, pin_factory: Any = None) -> None:
        self._pin_factory = pin_factory
        self.outputs: dict[int, Any] = {}

    def setmode(self, mode: int) -> None:
        pass  # gpiozero numbers pins the BCM way already

    def setwarnings(self, flag: bool) -> None:
        pass

    def setup(self, pin: int, direction: int, initial: int = 0, **kwargs: Any) -> None:
        from gpiozero import DigitalOutputDevice

        if pin not in self.outputs:
            self.outputs[pin] = DigitalOutputDevice(pin, initial_value=bool(initial), pin_factory=self._pin_factory)

    def output(self, pin: int, value: int) -> None:
        self.outputs[pin].value = bool(value)

    def cleanup(self, pins: int | list[int] | None = None) -> None:
        chosen = list(self.outputs) if pins is None else [pins] if isinstance(pins, int) else list(pins)
        for pin in chosen:
            device = self.outputs.pop(pin, None)
            if device is not None:
                device.close()


def open_device(board: Board, *, dummy: bool = False, pin_factory: Any = None, bus: Any = None) -> Any | None:
    """The luma device for `board` (None for headless boards); `dummy` for tests/simulation.
    `pin_factory` and `bus` (an spidev- or smbus-like object) replace the hardware in tests."""
    spec = board.display
    if spec is None:
        return None
    if dummy:
        from luma.core.device import dummy as dummy_device

        return dummy_device(width=spec.width, height=spec.height, mode=spec.mode)
    if spec.driver == "ssd1306":
        from luma.core.interface.serial import i2c
        from luma.oled.device import ssd1306

        serial = i2c(bus=bus, port=spec.i2c_port, address=spec.i2c_address)
        return ssd1306(serial, width=spec.width, height=spec.height, rotate=spec.rotate)
    if spec.driver == "st7789":
        if pin_factory is None:  # gpiozero would go hunting for RPi.GPIO and /dev/mem instead
            raise ValueError("the panel's DC and backlight pins need GPIO, which is not available (see the GPIO line)")
        from luma.lcd.device import st7789

        gpio = GpioOutputs(pin_factory)
        serial = _spi_releasing_the_gil()(
            spi=bus,
            gpio=gpio,
            port=spec.spi_port,
            device=spec.spi_device,
            gpio_DC=spec.gpio_dc,
            gpio_RST=None,  # none of these boards wires the panel's reset to a GPIO
            bus_speed_hz=SPI_SPEED_HZ,
        )
        return st7789(
            serial,
            gpio=gpio,
            width=spec.width,
            height=spec.height,
            rotate=spec.rotate,
            gpio_LIGHT=spec.gpio_backlight,
            active_low=False,
        )
    if spec.driver == "framebuffer":
        from luma.core.device import linux_framebuffer

        return linux_framebuffer(device=spec.fb_device)
    raise ValueError(f"unknown display driver {spec.driver!r}")


def _spi_releasing_the_gil() -> type:
    """luma's SPI interface, writing with spidev's `writebytes2`: luma calls `writebytes`, which holds
    Python's lock for the whole transfer, so the service's event loop (replication, buttons, the
    watchdog) would stop while a frame goes out from the display thread; `writebytes2` releases it."""
    from luma.core.interface.serial import spi

    class Spi(spi):  # type: ignore[misc]
        def _write_bytes(self, data: list[int]) -> None:
            self._spi.writebytes2(data)

    return Spi


class Display:
    """Shows frames on a luma device: skips frames equal to the last one, and says how long to
    wait before the next may be shown, so bursts of changes cost one redraw."""

    def __init__(
        self,
        device: Any,
        *,
        min_interval: float = MIN_FRAME_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.screen = Screen(device.width, device.height, "1" if device.mode == "1" else "RGB")
        self.min_interval = min_interval
        self._clock = clock
        self._last_bytes: bytes | None = None
        self._last_time = float("-inf")
        self.last_frame: Image.Image | None = None
        self.frames_shown = 0
        self.failing: str | None = None  # the last error while frames do not reach the panel

    def wait_time(self) -> float:
        """Seconds until another frame may be shown (0 when one may be shown now)."""
        return max(0.0, self._last_time + self.min_interval - self._clock())

    def show(self, image: Image.Image) -> bool:
        """Show `image` unless it equals the frame on screen; True if it was sent to the device."""
        if image.mode != self.device.mode:
            image = image.convert(self.device.mode)
        data = image.tobytes()
        if data == self._last_bytes:
            return False
        self._last_time = self._clock()  # a failed frame waits its turn too: no busy retries
        try:
            self.device.display(image)
        except Exception as e:  # a loose or missing panel (I2C NACK, SPI error): say so once, keep going
            if self.failing is None:
                log.error("display: frame not sent: %s", e)
            self.failing = str(e)
            return False
        if self.frames_shown == 0:
            log.info("display: first frame sent (%s)", self._panel())
        elif self.failing is not None:
            log.info("display: frames reach the panel again (%s)", self._panel())
        self.failing = None
        self._last_bytes = data
        self.last_frame = image
        self.frames_shown += 1
        return True

    def _panel(self) -> str:
        return f"{type(self.device).__name__} {self.device.width}x{self.device.height}"

    def save(self, path: Path) -> None:
        """Write the frame on screen as a PNG (simulation, README pictures)."""
        if self.last_frame is not None:
            self.last_frame.save(path)

    def close(self) -> None:
        if hasattr(self.device, "cleanup"):  # luma blanks the panel and releases its pins
            close_quietly(self.device.cleanup, "the display")
