"""`hyperpi qr`: show a feed key as a pairing QR code, or read one from a photo.

The payload is `HYPERPI:` + RFC 4648 base32 of the 32-byte key (`hypercore.keys.qr_payload`):
60 characters in QR alphanumeric mode fit version 3 (29x29 modules) at error level M, the same
symbol a device draws on its 128x64 screen. In the terminal each character cell shows two
modules stacked (Unicode half blocks), so the code is about 19 lines tall and roughly square.
Reading uses zxing-cpp, which copes with phone photos of a screen (tilt, glare, light-on-dark).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import segno

from hyperpi.hypercore.keys import parse_key, qr_payload, z32_encode
from hyperpi_host.cli import UserError

QR_VERSION = 3  # 29x29 modules: the largest that fits 64 px of OLED height at 2 px per module
QR_ERROR = "m"  # version 3 alphanumeric holds 61 characters at M; the payload is 60
# The QR standard asks for 4 light modules around the symbol; a dark terminal background does
# not count as light, so the quiet zone is drawn explicitly.
QUIET_ZONE = 4
PNG_SCALE = 10  # pixels per module: 370x370 px, sharp when printed or shown full screen

# Half-block glyphs indexed by (top module drawn, bottom module drawn).
GLYPHS = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584", (True, True): "\u2588"}
ANSI_BLACK_ON_WHITE = "\x1b[30;107m"
ANSI_RESET = "\x1b[0m"
STYLES = ("auto", "ansi", "dark", "light")
# A screenshot or photo beyond this is not a phone picture of a screen; decoding it would be slow.
MAX_PHOTO_PIXELS = 80_000_000


def make_qr(key: bytes) -> segno.QRCode:
    """The pairing QR symbol for a 32-byte feed key."""
    return segno.make_qr(qr_payload(key), error=QR_ERROR, version=QR_VERSION, mode="alphanumeric", boost_error=False)


def render_terminal(qr: segno.QRCode, style: str = "dark") -> str:
    """The QR code as text, two modules per character cell.

    `dark`: plain text for light-on-dark terminals (light modules are drawn, the background is
    the dark part). `light`: plain text for dark-on-light terminals (dark modules are drawn).
    `ansi`: sets black on white itself, so it scans on any terminal theme.
    """
    if style not in ("ansi", "dark", "light"):
        raise ValueError(f"unknown style {style!r}")
    draw_dark = style in ("ansi", "light")
    rows = [[bool(m) == draw_dark for m in row] for row in qr.matrix_iter(border=QUIET_ZONE)]
    if len(rows) % 2:
        # The last cell row has only a top module; its bottom half is left undrawn.
        rows.append([False] * len(rows[0]))
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        line = "".join(GLYPHS[(t, b)] for t, b in zip(top, bottom, strict=True))
        lines.append(f"{ANSI_BLACK_ON_WHITE}{line}{ANSI_RESET}" if style == "ansi" else line)
    return "\n".join(lines) + "\n"


def auto_style(stream=None) -> str:
    """ANSI colours on a terminal that takes them; else plain text for a dark background."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb" or not stream.isatty():
        return "dark"
    return "ansi"


def write_png(qr: segno.QRCode, path: Path) -> None:
    """Save the QR code as a black-on-white PNG."""
    try:
        qr.save(str(path), kind="png", scale=PNG_SCALE, border=QUIET_ZONE)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def read_keys(photo: Path) -> list[bytes]:
    """The hyperpi keys in the QR codes of a photo or screenshot (at least one, else UserError)."""
    import zxingcpp
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PHOTO_PIXELS
    try:
        with Image.open(photo) as opened:
            image = opened.convert("L")
    except FileNotFoundError:
        raise UserError(f"{photo} does not exist") from None
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise UserError(f"{photo} is not an image this tool can read (use PNG or JPEG)") from None
    except OSError as error:
        raise UserError(f"cannot read {photo}: {error.strerror or error}") from None
    found = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    if not found:
        raise UserError(f"no QR code found in {photo}; take the photo closer, sharp and straight on")
    keys: list[bytes] = []
    for barcode in found:
        try:
            key = parse_key(barcode.text)
        except ValueError:
            continue
        if key not in keys:
            keys.append(key)
    if not keys:
        shown = found[0].text[:40]
        raise UserError(f"the QR code in {photo} is not a hyperpi key (it holds {shown!r})")
    return keys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "qr",
        help="show a key as a pairing QR code, or read the key from a photo of one",
        description=(
            "Print the pairing QR code of a key (a person's name from `hyperpi keys list`, a "
            "device's name from `hyperpi devices`, or a key "
            "in z-base-32, hex or HYPERPI: form) in the terminal, or with --read decode a photo "
            "or screenshot of a device's screen and print its key in z-base-32."
        ),
    )
    parser.add_argument(
        "key",
        nargs="?",
        metavar="KEY_OR_NAME",
        help="a person's or device's name, or a key (z-base-32, hex or HYPERPI:)",
    )
    parser.add_argument("--png", type=Path, metavar="FILE", help="also save the QR code as a PNG")
    parser.add_argument("--read", type=Path, metavar="PHOTO", help="decode the QR code in PHOTO")
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="auto",
        help="terminal rendering: ansi colours, or plain text for a dark or light background "
        "(default: ansi on a terminal, else dark)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.read is not None:
        if args.key is not None or args.png is not None:
            raise UserError("--read takes only a PHOTO; run `hyperpi qr KEY` separately to show a key")
        for key in read_keys(args.read):
            print(z32_encode(key))
        return 0
    if args.key is None:
        raise UserError("give a key or key name (see `hyperpi keys list`), or --read PHOTO")
    from hyperpi_host import resolve  # keys imports this module: resolve at call time

    found = resolve.feed(args.key, "KEY")
    print_qr(found.key, args.style, args.png)
    resolve.say("KEY", found)
    return 0


def print_qr(key: bytes, style: str = "auto", png: Path | None = None) -> None:
    """Print the key's QR code and its z-base-32 text; optionally save a PNG too."""
    qr = make_qr(key)
    if png is not None:
        write_png(qr, png)
    sys.stdout.write(render_terminal(qr, auto_style() if style == "auto" else style))
    print(z32_encode(key))
    if png is not None:
        print(f"saved {png}")
