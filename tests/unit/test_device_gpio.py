"""The device's GPIO layer (hyperpi.device.gpio) and what depends on it: the board revision when the
firmware gave none, lgpio's working folder, closing that tolerates lgpio errors, the emulated test
board's active-high button, and a display that keeps going when its panel stops answering."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from luma.core.device import dummy
from PIL import Image

from hyperpi.device import gpio
from hyperpi.device.boards import get_board
from hyperpi.device.buttons import ButtonEvent, Buttons
from hyperpi.device.display import Display, open_device


@pytest.mark.parametrize(
    ("model", "revision"),
    [
        ("Raspberry Pi 3 Model B Rev 1.2", 0xA02082),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", 0xA020D3),
        ("Raspberry Pi 4 Model B Rev 1.4", 0xC03111),
        ("Raspberry Pi Zero 2 W Rev 1.0", 0x902120),
        ("Raspberry Pi 5 Model B Rev 1.0", None),
        ("linux,dummy-virt", None),
    ],
)
def test_revision_from_model(model: str, revision: int | None) -> None:
    assert gpio.revision_from_model(model) == revision


def test_board_revision_prefers_the_firmware_property(tmp_path: Path) -> None:
    prop, model = tmp_path / "linux,revision", tmp_path / "model"
    prop.write_bytes(bytes.fromhex("00c03114"))
    model.write_bytes(b"Raspberry Pi 3 Model B Rev 1.2\0")
    assert gpio.board_revision(prop, model) == (0xC03114, str(prop))


def test_board_revision_falls_back_to_the_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi Zero 2 W Rev 1.0\0")  # the kernel's NUL-terminated string
    revision, source = gpio.board_revision(tmp_path / "missing", model)
    assert revision == 0x902120 and "Zero 2 W" in source


def test_board_revision_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(gpio.GpioError, match="cannot tell which board"):
        gpio.board_revision(tmp_path / "missing", tmp_path / "also-missing")
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    with pytest.raises(gpio.GpioError, match="unsupported board 'Raspberry Pi 5"):
        gpio.board_revision(tmp_path / "missing", model)


def test_lgpio_workdir_is_the_runtime_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LG_WD", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    assert gpio.prepare_lgpio_workdir() == str(tmp_path) == os.environ["LG_WD"]


def test_lgpio_workdir_outside_systemd_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LG_WD", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    folder = Path(gpio.prepare_lgpio_workdir())
    try:
        assert folder.is_dir() and folder.stat().st_mode & 0o077 == 0  # mkdtemp: 0700
    finally:
        folder.rmdir()


@pytest.mark.skipif("lgpio" in sys.modules or os.path.exists("/dev/gpiochip0"), reason="a real Pi answers differently")
def test_no_lgpio_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LG_WD", str(tmp_path))
    monkeypatch.setitem(sys.modules, "lgpio", None)  # as on a laptop without it: import fails
    cwd = os.getcwd()
    with pytest.raises(gpio.GpioError, match="lgpio is not installed"):
        gpio.pin_factory(simulate=False)
    assert os.getcwd() == cwd


def test_close_quietly_logs_lgpio_errors(caplog: pytest.LogCaptureFixture) -> None:
    def busy() -> None:
        raise RuntimeError("GPIO busy")

    with caplog.at_level(logging.WARNING, logger="hyperpi.device"):
        gpio.close_quietly(busy, "button A")
    assert "closing button A: GPIO busy" in caplog.text


def test_spi_panel_needs_a_pin_factory() -> None:
    with pytest.raises(ValueError, match="DC and backlight pins need GPIO"):
        open_device(get_board("display-hat-mini"), pin_factory=None, bus=object())


def test_active_high_button_of_the_virt_test_board() -> None:
    """qemu-virt-test's line idles low and is driven high by QEMU for ~100 ms: a short press."""
    board = get_board("qemu-virt-test")
    factory = MockFactory(revision="a020a0")  # a Compute Module 3, as image/qemu_boot.py poses virt
    events: list[ButtonEvent] = []
    loop = asyncio.new_event_loop()
    try:
        buttons = Buttons(board.buttons, events.append, loop, pin_factory=factory)
        pin = buttons.pin("power")
        assert not buttons.buttons["power"].is_pressed
        pin.drive_high()
        loop.run_until_complete(asyncio.sleep(0.1))
        pin.drive_low()
        loop.run_until_complete(asyncio.sleep(0.1))
        buttons.close()
    finally:
        loop.close()
    assert events == [ButtonEvent("power", "send", False)]


class FlakyPanel(dummy):
    """luma's dummy device whose bus fails while `broken` is set, as a loose I2C panel does."""

    broken = False

    def display(self, image: Image.Image) -> None:
        if self.broken:
            raise OSError(121, "Remote I/O error")
        super().display(image)


def test_display_survives_a_panel_that_stops_answering(caplog: pytest.LogCaptureFixture) -> None:
    panel = FlakyPanel(width=128, height=64, mode="1")
    clock = [0.0]
    display = Display(panel, clock=lambda: clock[0])

    def frame(shade: int) -> Image.Image:
        return Image.new("1", (128, 64), shade)

    with caplog.at_level(logging.INFO, logger="hyperpi.device"):
        assert display.show(frame(0))
        panel.broken = True
        clock[0] += 1
        assert not display.show(frame(1))
        clock[0] += 1
        assert not display.show(frame(1))  # still failing: retried, not logged again
        panel.broken = False
        clock[0] += 1
        assert display.show(frame(1))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "display: first frame sent (FlakyPanel 128x64)"
    assert sum("frame not sent" in m for m in messages) == 1
    assert "frames reach the panel again" in messages[-1]
    assert display.frames_shown == 2 and display.failing is None


def test_redraw_loop_survives_a_frame_that_cannot_be_drawn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A missing font or a rendering bug logs one line; the loop keeps drawing the frames it can."""
    from tests.unit.test_device_buttons import make_service

    service, store = make_service(tmp_path, "display-hat-mini")
    real_frame = service.app.frame
    failures = [OSError("cannot open resource")] * 2

    def frame(screen: object) -> Image.Image:
        if failures:
            raise failures.pop()
        return real_frame(screen)

    service.app.frame = frame  # type: ignore[method-assign]

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(service.run(stop))
        for _ in range(3):
            await asyncio.sleep(0.05)
            service._changed.set()  # something changed: draw again
        await asyncio.sleep(0.05)
        stop.set()
        await task

    with caplog.at_level(logging.ERROR, logger="hyperpi.device"):
        asyncio.run(run())
    store.close()
    assert [r.getMessage() for r in caplog.records] == ["screen: cannot draw a frame: cannot open resource"]
    assert service.display is not None and service.display.frames_shown >= 1


def test_a_slow_panel_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    """A frame waiting on the bus (a slow or stalled SPI transfer) runs off the loop: timers, replication
    and the watchdog go on meanwhile, and stopping waits for the frame instead of cutting it."""
    import threading

    from tests.unit.test_device_buttons import make_service

    service, store = make_service(tmp_path, "display-hat-mini")
    assert service.display is not None
    device = service.display.device
    on_bus, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    real_display = device.display

    def slow_display(image: Image.Image) -> None:
        on_bus.set()
        release.wait(5)
        real_display(image)
        finished.append(True)

    device.display = slow_display

    async def run() -> int:
        stop = asyncio.Event()
        task = asyncio.ensure_future(service.run(stop))
        await asyncio.to_thread(on_bus.wait, 5)
        ticks = 0
        for _ in range(5):  # the loop keeps turning while the frame is on the bus
            await asyncio.sleep(0.01)
            ticks += 1
        task.cancel()  # as main.run does on SIGTERM
        await asyncio.sleep(0.05)
        assert not task.done() and not finished  # cancelled, but the frame is still being sent
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return ticks

    assert asyncio.run(run()) == 5
    store.close()
    assert finished == [True] and service.display.frames_shown == 1
