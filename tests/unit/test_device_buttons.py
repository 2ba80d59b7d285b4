"""Buttons through gpiozero's mock pin factory drive the real service and append to a real Core."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from hyperpi.device.boards import get_board
from hyperpi.device.buttons import Buttons
from hyperpi.device.config import DeviceConfig
from hyperpi.device.display import Display, open_device
from hyperpi.device.service import DeviceService
from hyperpi.hypercore import Core, Store

# Hold time: short so the test is quick, long enough that a tap (a 5 ms sleep, which a loaded
# machine can stretch tenfold) is never taken for a hold; the service uses buttons.HOLD_SECONDS.
HOLD = 0.4


def make_service(tmp_path: Path, board: str) -> tuple[DeviceService, Store]:
    store = Store(tmp_path / "store")
    own = Core.create(store)
    config = DeviceConfig(name="kitchen", board=board, presets=("Hello!", "On my way", "Yes"))
    device = open_device(get_board(board), dummy=True)  # None for headless
    display = Display(device, min_interval=0) if device is not None else None
    return DeviceService(config, store, own, display=display, state_dir=tmp_path, clock=lambda: 1_700_000_000.0), store


async def press(pin: object, hold: bool = False) -> None:
    pin.drive_low()  # type: ignore[attr-defined]
    await asyncio.sleep(HOLD * 2 if hold else 0.005)
    pin.drive_high()  # type: ignore[attr-defined]
    await asyncio.sleep(0.02)  # let call_soon_threadsafe deliver


def mock_buttons(service: DeviceService, board: str) -> Buttons:
    """The board's buttons on gpiozero's mock pins, feeding the service on the running loop."""
    return Buttons(
        get_board(board).buttons,
        service.handle_button,
        asyncio.get_running_loop(),
        hold_time=HOLD,
        pin_factory=MockFactory(),
    )


def texts(core: Core) -> list[str]:
    return [json.loads(core.get(i))["text"] for i in range(core.length)]


@pytest.mark.parametrize("board", ["display-hat-mini", "mini-pitft", "oled-bonnet", "headless"])
def test_cycle_and_send_append_the_selected_preset(tmp_path: Path, board: str) -> None:
    async def scenario() -> None:
        service, store = make_service(tmp_path, board)
        spec = get_board(board)
        buttons = mock_buttons(service, board)
        next_name = next(b.name for b in spec.buttons if b.press == "next")
        send_name = next(b.name for b in spec.buttons if b.press == "send")
        service.app.mode = "chat"
        await press(buttons.pin(next_name))
        await press(buttons.pin(next_name))
        await press(buttons.pin(send_name))
        assert texts(service.own) == ["Yes"]
        await press(buttons.pin(next_name))  # wraps to the first preset
        await press(buttons.pin(send_name))
        assert texts(service.own) == ["Yes", "Hello!"]
        block = json.loads(service.own.get(1))
        assert block["type"] == "chat" and block["nick"] == "kitchen" and block["time"] == 1_700_000_000_000
        buttons.close()
        service.close()
        store.close()

    asyncio.run(scenario())


def test_hold_opens_pairing_and_any_press_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, store = make_service(tmp_path, "display-hat-mini")
        buttons = mock_buttons(service, "display-hat-mini")
        service.app.mode = "chat"
        await press(buttons.pin("A"), hold=True)
        assert service.app.mode == "pairing"
        assert service.own.length == 0  # a hold is not also a press
        await press(buttons.pin("B"))  # the send button only returns from pairing here
        assert service.app.mode == "chat" and service.own.length == 0
        buttons.close()
        store.close()

    asyncio.run(scenario())


def test_splash_then_chat_and_scrolling(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, store = make_service(tmp_path, "display-hat-mini")
        buttons = mock_buttons(service, "display-hat-mini")
        assert service.app.mode == "splash"
        await press(buttons.pin("X"))  # any press leaves the splash
        assert service.app.mode == "chat"
        for _ in range(3):
            service.append_chat("hi")
        await press(buttons.pin("X"))
        await press(buttons.pin("X"))
        assert service.app.scroll == 2
        await press(buttons.pin("Y"))
        assert service.app.scroll == 1
        assert service.redraw() is True  # the scrolled view is a new frame
        assert service.redraw() is False  # unchanged: not sent to the screen again
        buttons.close()
        store.close()

    asyncio.run(scenario())


def test_two_button_board_scrolls_with_a_hold(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, store = make_service(tmp_path, "mini-pitft")
        buttons = mock_buttons(service, "mini-pitft")
        service.app.mode = "chat"
        service.append_chat("one")
        service.append_chat("two")
        await press(buttons.pin("bottom"), hold=True)
        assert service.app.scroll == 1 and service.own.length == 2
        await press(buttons.pin("bottom"), hold=True)  # past the oldest: back to the newest
        assert service.app.scroll == 0
        buttons.close()
        store.close()

    asyncio.run(scenario())


def test_redraw_waits_for_the_next_age_tick(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]
    store = Store(tmp_path / "store")
    own = Core.create(store)
    config = DeviceConfig(name="kitchen", board="oled-bonnet")
    device = open_device(get_board("oled-bonnet"), dummy=True)
    service = DeviceService(config, store, own, display=Display(device, min_interval=0), clock=lambda: clock[0])
    service.app.mode = "chat"
    service.append_chat("hi")
    clock[0] += 2  # past the send flash: "now" until 10 s old
    assert abs(service.app.next_change_in() - 8) < 1e-6
    clock[0] += 100  # "1m": the label changes at 120 s
    assert abs(service.app.next_change_in() - 18) < 1e-6
    assert service.redraw() is True and service.redraw() is False
    store.close()
