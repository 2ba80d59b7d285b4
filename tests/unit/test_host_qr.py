"""`hyperpi qr`: the QR symbol, its PNG and terminal renderings (decoded back with zxing-cpp),
and reading keys from photos."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image, ImageFilter, ImageOps

from hyperpi.hypercore.keys import core_key, generate_keypair, qr_payload, z32_encode
from hyperpi_host import keys, qr
from tests.conftest import run_cli as run

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
FULL, UPPER, LOWER = "\u2588", "\u2580", "\u2584"


@pytest.fixture
def key() -> bytes:
    return core_key(generate_keypair(bytes(range(32))).public_key)


def decode(image: Image.Image, try_invert: bool = False) -> list[str]:
    return [b.text for b in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode, try_invert=try_invert)]


def rasterise(text: str, drawn_is_dark: bool, px: int = 4) -> Image.Image:
    """A terminal screen as the phone camera sees it: each cell is one module wide and two tall.

    `drawn_is_dark`: whether a glyph's ink is dark (light terminal, or our ANSI black-on-white)
    or light (light-on-dark terminal)."""
    lines = ANSI_ESCAPE.sub("", text).rstrip("\n").split("\n")
    width = max(len(line) for line in lines)
    ink, paper = (0, 255) if drawn_is_dark else (255, 0)
    image = Image.new("L", (width, 2 * len(lines)), paper)
    for y, line in enumerate(lines):
        for x, ch in enumerate(line):
            if ch in (FULL, UPPER):
                image.putpixel((x, 2 * y), ink)
            if ch in (FULL, LOWER):
                image.putpixel((x, 2 * y + 1), ink)
            assert ch in (FULL, UPPER, LOWER, " "), f"unexpected character {ch!r}"
    return image.resize((width * px, 2 * len(lines) * px), Image.NEAREST)


def test_symbol_is_version_3_alphanumeric(key: bytes) -> None:
    symbol = qr.make_qr(key)
    assert (symbol.version, symbol.error, symbol.mode) == (3, "M", "alphanumeric")
    assert symbol.symbol_size(border=0) == (29, 29)
    assert len(qr_payload(key)) == 60


@pytest.mark.parametrize("style, drawn_is_dark", [("dark", False), ("light", True), ("ansi", True)])
def test_terminal_rendering_decodes(key: bytes, style: str, drawn_is_dark: bool) -> None:
    text = qr.render_terminal(qr.make_qr(key), style)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == (29 + 2 * qr.QUIET_ZONE + 1) // 2  # two modules per line: 19 lines
    if style == "ansi":
        assert all(line.startswith(qr.ANSI_BLACK_ON_WHITE) and line.endswith(qr.ANSI_RESET) for line in lines)
    # Decoded without zxing's "try inverted" so the colours must be right, as a phone sees them.
    assert decode(rasterise(text, drawn_is_dark)) == [qr_payload(key)]


def test_qr_name_png_decodes_to_the_key(hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, "keys", "new", "kitchen")
    feed = keys.load_identity("kitchen").feed_key
    png = tmp_path / "f.png"
    code, out, _ = run(capsys, "qr", "kitchen", "--png", str(png), "--style", "dark")
    assert code == 0
    assert z32_encode(feed) in out
    with Image.open(png) as image:
        assert decode(image) == [qr_payload(feed)]
    # The terminal output of the same command decodes too.
    terminal = "\n".join(line for line in out.split("\n") if line and set(line) <= {FULL, UPPER, LOWER, " "})
    assert decode(rasterise(terminal, drawn_is_dark=False)) == [qr_payload(feed)]


def test_keys_show_png_matches_qr(hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, "keys", "new", "kitchen")
    png = tmp_path / "show.png"
    assert run(capsys, "keys", "show", "kitchen", "--qr", "--png", str(png))[0] == 0
    with Image.open(png) as image:
        assert decode(image) == [qr_payload(keys.load_identity("kitchen").feed_key)]


def test_every_key_form_gives_the_same_code(hyperpi_home: Path, key: bytes, capsys: pytest.CaptureFixture) -> None:
    outputs = set()
    for text in (z32_encode(key), key.hex(), key.hex().upper(), qr_payload(key), qr_payload(key).lower()):
        code, out, _ = run(capsys, "qr", text, "--style", "dark")
        assert code == 0
        outputs.add(out)
    assert len(outputs) == 1
    assert z32_encode(key) in outputs.pop()


def make_photo(png_path: Path, out: Path, invert: bool) -> None:
    """A phone-photo-like picture: the code small on a grey, textured scene, tilted, blurred, JPEG."""
    with Image.open(png_path) as code_image:
        code_image = code_image.convert("L")
        code_image = code_image.resize((300, 300 * code_image.height // code_image.width), Image.BILINEAR)
    if invert:  # a light-on-dark OLED screen
        code_image = ImageOps.invert(code_image)
    scene = Image.effect_noise((1200, 900), 40).point(lambda v: 90 + v // 4)
    scene.paste(code_image, (420, 260))
    scene = scene.rotate(9, resample=Image.BICUBIC, fillcolor=100).filter(ImageFilter.GaussianBlur(1.2))
    scene.convert("RGB").save(out, quality=70)


@pytest.mark.parametrize("invert", [False, True])
def test_read_photo_prints_key(
    hyperpi_home: Path, tmp_path: Path, key: bytes, capsys: pytest.CaptureFixture, invert: bool
) -> None:
    png = tmp_path / "code.png"
    qr.write_png(qr.make_qr(key), png)
    photo = tmp_path / "photo.jpg"
    make_photo(png, photo, invert)
    code, out, _ = run(capsys, "qr", "--read", str(photo))
    assert code == 0
    assert out == z32_encode(key) + "\n"


@pytest.mark.parametrize("board", ["oled-bonnet", "display-hat-mini"])
def test_read_photo_of_a_device_pairing_screen(
    hyperpi_home: Path, tmp_path: Path, key: bytes, capsys: pytest.CaptureFixture, board: str
) -> None:
    # The frame the device itself shows on a long press, scaled up as a camera would see it.
    from hyperpi.device.boards import BOARDS
    from hyperpi.device.render import Screen, render_pairing

    spec = BOARDS[board].display
    frame = render_pairing(Screen(spec.width, spec.height, spec.mode), key, "kitchen").convert("L")
    png = tmp_path / "screen.png"
    frame.resize((spec.width * 6, spec.height * 6), Image.NEAREST).save(png)
    photo = tmp_path / "screen.jpg"
    make_photo(png, photo, invert=False)
    code, out, _ = run(capsys, "qr", "--read", str(photo))
    assert code == 0
    assert out == z32_encode(key) + "\n"


def test_read_refusals(hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    url = tmp_path / "url.png"
    import segno

    segno.make_qr("https://example.org/").save(str(url), scale=8)
    cases = [
        (tmp_path / "missing.png", "does not exist"),
        (not_image, "is not an image"),
        (blank, "no QR code found"),
        (url, "not a hyperpi key"),
    ]
    for path, message in cases:
        code, out, err = run(capsys, "qr", "--read", str(path))
        assert code == 2, path
        assert message in err and err.count("\n") == 1 and out == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["qr", "nobody"], "no person or device is named 'nobody'"),
        (["qr", "HYPERPI:ABC"], "bad key"),
        (["qr", "v" * 52], "bad key"),  # "v" is not z-base-32
        (["qr"], "give a key or key name"),
    ],
)
def test_bad_keys_are_one_line_exit_2(
    hyperpi_home: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and out == ""


def test_png_to_unwritable_place_is_one_line(
    hyperpi_home: Path, tmp_path: Path, key: bytes, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run(capsys, "qr", z32_encode(key), "--png", str(tmp_path / "no" / "dir" / "f.png"))
    assert code == 2 and "cannot write" in err and out == ""


def test_auto_style_uses_colours_only_on_a_colour_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert qr.auto_style(Tty()) == "ansi"
    monkeypatch.setenv("NO_COLOR", "1")
    assert qr.auto_style(Tty()) == "dark"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert qr.auto_style(Tty()) == "dark"
    monkeypatch.setenv("TERM", "xterm")
    with open(__file__) as not_a_terminal:
        assert qr.auto_style(not_a_terminal) == "dark"  # a pipe or file: plain text
