"""Golden frames: known timelines rendered through luma's real dummy device for each board
profile, compared pixel by pixel with the PNGs in tests/fixtures/frames/.

`make golden` rewrites the PNGs (HYPERPI_GOLDEN=regen); look at each one before committing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from hyperpi.device.app import DeviceApp
from hyperpi.device.boards import BOARDS, get_board
from hyperpi.device.display import Display, open_device
from hyperpi.device.render import ChatFrame, _style, lines_shown, render_chat
from hyperpi.device.timeline import Presets, Timeline
from hyperpi.hypercore import core_key, generate_keypair

FRAMES = Path(__file__).resolve().parent.parent / "fixtures" / "frames"
REGEN = os.environ.get("HYPERPI_GOLDEN") == "regen"
NOW = 1_767_225_600.0  # 2026-01-01 00:00 UTC: fixed, so ages are the same on every run
OWN = core_key(generate_keypair(bytes(32)).public_key)
ANA = core_key(generate_keypair(bytes([1]) * 32).public_key)
BOB = core_key(generate_keypair(bytes([2]) * 32).public_key)
STRANGER = core_key(generate_keypair(bytes([3]) * 32).public_key)
# Colour differences up to this much are anti-aliasing noise between FreeType builds; a changed
# word changes hundreds of pixels by far more.
NOISE = 64
MAX_NOISY_FRACTION = 0.002


class ListFeed:
    def __init__(self, key: bytes, blocks: list[bytes]) -> None:
        self.key, self.blocks = key, blocks

    @property
    def length(self) -> int:
        return len(self.blocks)

    def get(self, index: int) -> bytes:
        return self.blocks[index]


def chat(text: str, ago: float, nick: str = "") -> bytes:
    return json.dumps({"type": "chat", "text": text, "time": int((NOW - ago) * 1000), "nick": nick}).encode()


def scene_app() -> DeviceApp:
    """The timeline every golden chat frame shows: names, unread, a flood, a delivered tick."""
    tl = Timeline(OWN, seen={BOB: 1, ANA: 2}, clock=lambda: NOW)
    tl.names.update({ANA: "Ana", BOB: "Bob"})
    tl.update(
        ListFeed(ANA, [chat("Dinner at 7? Bring the 🍕 and something to drink, please", 3600), chat("ok 👍", 600)])
    )
    tl.update(ListFeed(BOB, [chat(f"flood {i}", 300 - i) for i in range(8)]))
    tl.update(ListFeed(STRANGER, [b'{"kind":"note","v":1}']))
    tl.update(ListFeed(OWN, [chat("On my way", 90, "kitchen"), chat("Hello!", 5, "kitchen")]))
    tl.set_peer_lengths("peer-a", {OWN: 1})
    tl.set_peer_lengths("peer-b", {OWN: 2})
    app = DeviceApp("kitchen", tl, Presets(["Hello!", "On my way", "Yes", "No"]), clock=lambda: NOW)
    app.mode, app.network_up, app.peers = "chat", True, 2
    app.presets.next()
    return app


def short_app(own_messages: int) -> DeviceApp:
    """A short history: one message from Ana, then `own_messages` of the device's own."""
    tl = Timeline(OWN, clock=lambda: NOW)
    tl.names[ANA] = "Ana"
    tl.update(ListFeed(ANA, [chat("Is anyone home?", 900)]))
    tl.update(ListFeed(OWN, [chat(f"yes {i}", 600 - i) for i in range(own_messages)]))
    app = DeviceApp("kitchen", tl, Presets(["Hello!"]), clock=lambda: NOW)
    app.mode, app.network_up, app.peers = "chat", True, 1
    return app


def frame(board: str, scene: str) -> Image.Image:
    device = open_device(get_board(board), dummy=True)  # luma.core.device.dummy
    display = Display(device)
    app = scene_app()
    if scene == "scrolled":  # two presses up: two messages up from the newest, not four
        app.handle("up")
        app.handle("up")
    elif scene == "short-scrolled":  # one press up on two messages: Ana's stays on screen
        app = short_app(1)
        app.handle("up")
    elif scene == "own-flood":  # collapsed only where the screen lacks room; named, not a key
        app = short_app(40)
    if scene == "splash":
        app.mode = "splash"
    elif scene == "pairing":
        app.mode = "pairing"
    elif scene == "offline":
        app.network_up = False
    assert display.show(app.frame(display.screen))
    return device.image.copy()  # what the device holds, after luma's own preprocessing


BOARDS_WITH_SCREENS = [name for name, b in BOARDS.items() if b.display is not None]
SCENES = ["splash", "chat", "offline", "pairing", "scrolled", "short-scrolled", "own-flood"]


@pytest.mark.parametrize("scene", SCENES)
@pytest.mark.parametrize("board", BOARDS_WITH_SCREENS)
def test_golden_frame(board: str, scene: str, tmp_path: Path) -> None:
    image = frame(board, scene)
    path = FRAMES / f"{board}-{scene}.png"
    if REGEN:
        FRAMES.mkdir(parents=True, exist_ok=True)
        image.save(path)
    assert path.exists(), f"missing {path}: run `make golden` and look at the PNGs"
    golden = Image.open(path)
    assert golden.size == image.size and golden.mode == image.mode
    if image.mode == "1":  # bitmap font, no anti-aliasing: must match exactly
        assert ImageChops.difference(golden.convert("L"), image.convert("L")).getbbox() is None, _save(
            image, tmp_path, path
        )
        return
    diff = ImageChops.difference(golden.convert("RGB"), image.convert("RGB")).convert("L")
    noisy = sum(diff.point(lambda v: 255 if v > NOISE else 0).histogram()[255:])
    assert noisy <= MAX_NOISY_FRACTION * image.width * image.height, _save(image, tmp_path, path)


def _save(image: Image.Image, tmp_path: Path, golden: Path) -> str:
    out = tmp_path / golden.name
    image.save(out)
    return f"frame differs from {golden}; this run's frame is {out}"


def test_oled_frames_are_one_bit_and_tft_frames_colour() -> None:
    assert frame("oled-bonnet", "chat").mode == "1"
    chat_frame = frame("display-hat-mini", "chat").convert("RGB")
    assert len(chat_frame.getcolors(1 << 16) or []) > 8  # names, ages, ticks in colour


@pytest.mark.parametrize("board", BOARDS_WITH_SCREENS)
def test_one_press_scrolls_one_message(board: str) -> None:
    app = scene_app()
    screen = Display(open_device(get_board(board), dummy=True)).screen
    newest_first = [line.text for line in reversed(app.chat_frame(max_run=None).lines)]
    app.handle("up")
    shown = app.chat_frame(max_run=None)
    assert shown.scroll == 1 and shown.lines[-1].text == newest_first[1]
    # render_chat draws the lines it is given: a frame scrolled by the app is not scrolled again
    unscrolled = ChatFrame(**{**shown.__dict__, "scroll": 0})
    bar = render_chat(screen, shown).height - _style(screen).line - 1
    crop = (0, 0, screen.width, bar)
    assert render_chat(screen, shown).crop(crop).tobytes() == render_chat(screen, unscrolled).crop(crop).tobytes()


def test_own_flood_is_named_and_collapsed_only_without_room() -> None:
    app = short_app(40)
    collapsed = [line for line in app.chat_frame().lines if line.collapsed]
    assert [(line.sender, line.text) for line in collapsed] == [("kitchen", "37")]
    # A run of 5 (over MAX_RUN) on a big screen with room for it: every message shown.
    roomy, big = short_app(5), Display(open_device(get_board("hdmi"), dummy=True)).screen
    whole = roomy.chat_frame(max_run=None).lines
    assert lines_shown(big, whole) == len(whole)
    assert any(line.collapsed for line in roomy.chat_frame().lines)
    image = roomy.frame(big)
    assert image.tobytes() == render_chat(big, roomy.chat_frame(max_run=None)).tobytes()
    assert image.tobytes() != render_chat(big, roomy.chat_frame()).tobytes()
    # No room for all 40: as many shown as keep Ana's message on screen, the rest one line.
    mini = Display(open_device(get_board("display-hat-mini"), dummy=True)).screen
    fitted = app.fitted_chat_frame(mini)
    shown = fitted.lines[len(fitted.lines) - lines_shown(mini, fitted.lines) :]
    assert shown[0].sender == "Ana" and shown[1].collapsed and shown[1].sender == "kitchen"
    assert int(shown[1].text) < 37 and not any(line.collapsed for line in shown[2:])
