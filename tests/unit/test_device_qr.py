"""The pairing screen's QR code, read back by a real decoder (zxing-cpp), gives the device's key."""

from __future__ import annotations

import pytest
import zxingcpp

from hyperpi.device.boards import get_board
from hyperpi.device.display import Display, open_device
from hyperpi.device.render import render_pairing
from hyperpi.hypercore import core_key, generate_keypair, parse_key, z32_encode


@pytest.mark.parametrize("board", ["oled-bonnet", "mini-pitft", "display-hat-mini", "hdmi"])
@pytest.mark.parametrize("seed", [0, 7, 255])
def test_pairing_qr_reads_back_as_the_key(board: str, seed: int) -> None:
    key = core_key(generate_keypair(bytes([seed]) * 32).public_key)
    device = open_device(get_board(board), dummy=True)
    display = Display(device)
    display.show(render_pairing(display.screen, key, "kitchen"))
    shown = device.image.convert("L")  # the pixels the luma device holds
    results = zxingcpp.read_barcodes(shown)
    assert len(results) == 1, f"{board}: no QR code found"
    assert results[0].format == zxingcpp.BarcodeFormat.QRCode
    assert results[0].text.startswith("HYPERPI:")
    assert parse_key(results[0].text) == key


def test_qr_fills_the_small_screen_and_shows_the_key_text() -> None:
    key = core_key(generate_keypair(bytes(32)).public_key)
    device = open_device(get_board("oled-bonnet"), dummy=True)
    Display(device).show(render_pairing(Display(device).screen, key))
    image = device.image.convert("L")
    (result,) = zxingcpp.read_barcodes(image)
    pos = result.position
    height = max(pos.bottom_left.y, pos.bottom_right.y) - min(pos.top_left.y, pos.top_right.y)
    assert height >= 50  # 2 px per module on a 64 px screen (29 modules, version 3)
    # The right half carries the z-base-32 key as text: lit pixels are there (dark text on light).
    right = image.crop((70, 0, 128, 64))
    assert right.getextrema() == (0, 255)
    assert len(z32_encode(key)) == 52
