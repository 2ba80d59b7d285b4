"""Frames for the device's screen: splash, chat, and pairing QR, drawn with Pillow.

Each function takes a `Screen` (size and colour mode) and plain data, and returns a PIL image;
it never knows which display shows it (as luma's canvas). Small 1-bit screens (the 128x64 OLED)
use Pillow's built-in 6x11 bitmap font, which stays crisp without anti-aliasing; colour TFTs use
DejaVu Sans Mono (Debian's fonts-dejavu-core). Both are monospaced, so text wraps by counting
characters. Characters a font cannot draw (emoji, CJK on the bitmap font) become short ASCII
stand-ins or a symbol, never empty boxes.
"""

from __future__ import annotations

import textwrap
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from hyperpi.hypercore.keys import qr_payload, z32_encode

DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")  # Debian fonts-dejavu-core
SMALL_SCREEN_WIDTH = 200  # narrower screens get the bitmap font (a TTF at 11 px smears on OLED)
UNKNOWN_SYMBOL = "¤"  # in Latin-1, so the bitmap font has it too
EMOJI_TEXT = {  # common emoji as text both fonts can draw
    "😀": ":D",
    "😃": ":D",
    "😄": ":D",
    "😁": ":D",
    "😂": ":'D",
    "🤣": ":'D",
    "😊": ":)",
    "🙂": ":)",
    "😉": ";)",
    "😛": ":P",
    "😜": ";P",
    "😢": ":'(",
    "😭": ":'(",
    "🙁": ":(",
    "☹": ":(",
    "😮": ":o",
    "😎": "B)",
    "❤": "<3",
    "💕": "<3",
    "😍": "<3",
    "👍": "+1",
    "👎": "-1",
    "👋": "o/",
    "🎉": "\\o/",
    "🙏": "(thx)",
    "✅": "[v]",
    "✔": "v",
    "❌": "[x]",
    "🔥": "(fire)",
    "☕": "(tea)",
    "🍕": "(pizza)",
}

BLACK, WHITE = (0, 0, 0), (255, 255, 255)
PALETTE = {  # colour TFTs only
    "status_bg": (24, 64, 120),
    "status_fg": WHITE,
    "text": (235, 235, 235),
    "age": (140, 140, 140),
    "own": (120, 220, 120),
    "unread": (255, 196, 0),
    "tick": (90, 220, 90),
    "dim": (130, 130, 130),
    "bar_bg": (48, 48, 48),
    "bar_fg": (255, 214, 90),
}
SENDER_COLOURS = [
    (120, 190, 255),
    (255, 150, 120),
    (210, 150, 255),
    (255, 120, 200),
    (120, 230, 220),
    (230, 210, 120),
]


@dataclass(frozen=True)
class Screen:
    width: int
    height: int
    mode: str  # "1" (monochrome OLED) or "RGB"

    @property
    def small(self) -> bool:
        return self.width < SMALL_SCREEN_WIDTH


@dataclass(frozen=True)
class Line:
    """One message as the chat screen shows it (built by app.py from the timeline)."""

    sender: str
    age: str
    text: str
    sender_key: bytes = b""  # picks the sender's colour
    unread: bool = False
    own: bool = False
    delivered: int | None = None  # own messages: how many peers hold it
    collapsed: bool = False  # stands for hidden messages of a flooding feed


@dataclass(frozen=True)
class ChatFrame:
    name: str
    status: str  # "no network", "no peers yet", "2 peers"
    unread: int
    lines: tuple[Line, ...]  # oldest first
    preset: str
    preset_pos: str  # "2/6"
    scroll: int = 0  # how many messages up from the newest the bottom line is: shown, not applied
    # (`lines` already ends at the message on the bottom line: DeviceApp.chat_frame scrolls)
    sending: bool = False  # flash the preset bar after a send


@dataclass
class _Style:
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont
    bold: ImageFont.ImageFont | ImageFont.FreeTypeFont
    advance: float  # width of one character cell
    line: int  # height of one text row
    colour: bool
    dy: int = 0  # where a row's text is drawn relative to the row's top

    def text(self, draw: ImageDraw.ImageDraw, x: float, y: int, text: str, fill: object, bold: bool = False) -> None:
        draw.text((x, y + self.dy), text, font=self.bold if bold else self.font, fill=fill)


@lru_cache(maxsize=8)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(DEJAVU_DIR / name), size)


@lru_cache(maxsize=8)
def _style(screen: Screen) -> _Style:
    if screen.small or screen.mode == "1":
        font = ImageFont.load_default_imagefont()
        # Its cells are 11 px but ASCII ink uses rows 1-10: rows 10 px apart, drawn 1 px up.
        return _Style(font, font, 6, 10, screen.mode != "1", dy=-1)
    size = min(24, max(13, screen.width // 18))
    font = _font("DejaVuSansMono.ttf", size)
    bold = _font("DejaVuSansMono-Bold.ttf", size)
    return _Style(font, bold, font.getlength("M"), size + 3, True)


def drawable(text: str, screen: Screen) -> str:
    """`text` with what the screen's font cannot draw replaced by stand-ins."""
    latin1 = _style(screen).font is _style(screen).bold  # the bitmap font
    out = []
    for ch in text:
        if ch in EMOJI_TEXT:
            out.append(EMOJI_TEXT[ch])
        elif ch == "\ufe0f" or ch == "\u200d":  # emoji variation selector / joiner: nothing to draw
            continue
        elif (latin1 and ord(ch) > 0xFF) or ord(ch) > 0xFFFF or _no_glyph_range(ch):
            out.append("..." if ch == "…" and latin1 else UNKNOWN_SYMBOL)
        else:
            out.append(ch)
    return "".join(out)


def _no_glyph_range(ch: str) -> bool:
    # Scripts DejaVu Sans Mono has no glyphs for: CJK, Hangul, emoji blocks.
    o = ord(ch)
    return 0x2E80 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF or 0x1F000 <= o


def _new(screen: Screen, bg: object = None) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    if screen.mode == "1":
        img = Image.new("1", (screen.width, screen.height), 0 if bg is None else 1)
    else:
        img = Image.new("RGB", (screen.width, screen.height), BLACK if bg is None else bg)
    return img, ImageDraw.Draw(img)


def _c(style: _Style, name: str, mono: int = 1) -> object:
    return PALETTE[name] if style.colour else mono


def render_splash(screen: Screen, name: str, subtitle: str = "hyperpi") -> Image.Image:
    """Boot screen: the device's name, large and centred."""
    img, draw = _new(screen)
    st = _style(screen)
    name = drawable(name, screen)
    if st.font is st.bold:  # bitmap font: draw at 1x, then scale 2x with hard edges
        small = Image.new("1", (len(name) * 6 + 1, 11), 0)
        ImageDraw.Draw(small).text((0, 0), name, font=st.font, fill=1)
        scale = max(1, min(3, (screen.width - 4) // max(1, small.width)))
        big = small.resize((small.width * scale, 11 * scale), Image.NEAREST)
        img.paste(
            big.convert(img.mode) if img.mode != "1" else big,
            ((screen.width - big.width) // 2, (screen.height - big.height) // 2),
        )
        draw.text(((screen.width - len(subtitle) * 6) // 2, 2), subtitle, font=st.font, fill=_c(st, "dim"))
    else:
        big = _font("DejaVuSansMono-Bold.ttf", max(18, screen.height // 7))
        w = draw.textlength(name, font=big)
        while w > screen.width - 8 and len(name) > 1:
            name = name[:-1]
            w = draw.textlength(name, font=big)
        draw.text(((screen.width - w) / 2, screen.height / 2), name, font=big, fill=WHITE, anchor="lm")
        sw = draw.textlength(subtitle, font=st.font)
        draw.text(
            ((screen.width - sw) / 2, screen.height / 2 - big.size),
            subtitle,
            font=st.font,
            fill=PALETTE["dim"],
            anchor="lm",
        )
    return img


def _fit(text: str, cols: int) -> str:
    return text if len(text) <= cols else text[: max(0, cols - 1)] + "~"


def render_chat(screen: Screen, chat: ChatFrame) -> Image.Image:
    """Status line on top, messages (newest at the bottom), the selected preset below."""
    img, draw = _new(screen)
    st = _style(screen)
    cols = int(screen.width // st.advance)
    lh = st.line

    # Status line: name on the left; peers and unread on the right.
    right = drawable(chat.status + (f" {chat.unread} new" if chat.unread else ""), screen)
    left = _fit(drawable(chat.name, screen), max(1, cols - len(right) - 2))
    draw.rectangle((0, 0, screen.width - 1, lh - 1), fill=_c(st, "status_bg"))
    fg = _c(st, "status_fg", 0)
    st.text(draw, 0, 0, left, fg, bold=True)
    st.text(draw, screen.width - 1 - len(right) * st.advance, 0, right, fg)

    # Preset bar at the bottom: the canned message the send button would send.
    bar_y = screen.height - lh
    marker = "*" if chat.sending else ">"
    pos = f" {chat.preset_pos}" + (f" -{chat.scroll}" if chat.scroll else "")
    text = f"{marker} " + _fit(drawable(chat.preset, screen), cols - 2 - len(pos))
    if st.colour:
        draw.rectangle((0, bar_y, screen.width - 1, screen.height - 1), fill=PALETTE["bar_bg"])
    else:
        draw.line((0, bar_y - 1, screen.width - 1, bar_y - 1), fill=1)
    st.text(draw, 0, bar_y, text, _c(st, "bar_fg"))
    st.text(draw, screen.width - 1 - len(pos) * st.advance, bar_y, pos, _c(st, "age"))

    # Messages, from the bottom up, until the area is full.
    top, y = lh + 1, bar_y - 1
    for line in reversed(chat.lines):
        rows = _message_rows(line, screen, cols - 1)  # column 0 holds the unread mark
        for row in reversed(rows):
            if y - lh < top:
                return img
            y -= lh
            _draw_row(draw, st, row, y, line)
    return img


def lines_shown(screen: Screen, lines: tuple[Line, ...]) -> int:
    """How many of `lines`, from the newest, render_chat puts on the screen (a row or more each)."""
    st = _style(screen)
    cols = int(screen.width // st.advance)
    rows = (screen.height - st.line - 1 - (st.line + 1)) // st.line  # between status and preset bars
    shown = 0
    for line in reversed(lines):
        if rows <= 0:
            break
        rows -= len(_message_rows(line, screen, cols - 1))
        shown += 1
    return shown


def _message_rows(line: Line, screen: Screen, cols: int) -> list[tuple[str, int]]:
    """Wrapped rows of one message; each row with how many leading chars are the header."""
    if line.collapsed:
        return [(_fit(drawable(f"+{line.text} more from {line.sender}", screen), cols), 0)]
    tick = f" v{line.delivered}" if line.delivered else ""  # 'v' cell is drawn over as a tick
    header = f"{drawable(line.sender, screen)} {line.age}{tick}"
    body = drawable(line.text, screen)
    wrapped = textwrap.wrap(f"{header} {body}", cols, break_long_words=True, break_on_hyphens=False) or [header]
    rows, left = [], len(header)
    for w in wrapped:
        rows.append((w, max(0, min(left, len(w)))))
        left -= len(w) + 1
    return rows


def _draw_row(draw: ImageDraw.ImageDraw, st: _Style, row: tuple[str, int], y: int, line: Line) -> None:
    text, header_len = row
    x0 = st.advance
    if line.unread:  # a bar in the left column marks messages never seen before
        draw.rectangle((1, y + 1, max(2, int(st.advance // 3)), y + st.line - 2), fill=_c(st, "unread"))
    if line.collapsed:
        st.text(draw, x0, y, text, _c(st, "dim"))
        return
    header, body = text[:header_len], text[header_len:]
    if header:
        sender_len = min(len(header), len(line.sender))
        colour = PALETTE["own"] if line.own else SENDER_COLOURS[zlib.crc32(line.sender_key) % len(SENDER_COLOURS)]
        st.text(draw, x0, y, header[:sender_len], colour if st.colour else 1, bold=True)
        rest = header[sender_len:]
        tick_at = rest.find(" v") if line.delivered else -1
        st.text(
            draw,
            x0 + sender_len * st.advance,
            y,
            rest.replace(" v", "  ", 1) if tick_at >= 0 else rest,
            _c(st, "age"),
        )
        if tick_at >= 0:
            _draw_tick(draw, st, x0 + (sender_len + tick_at + 1) * st.advance, y)
    st.text(draw, x0 + len(header) * st.advance, y, body, _c(st, "text"))


def _draw_tick(draw: ImageDraw.ImageDraw, st: _Style, x: int, y: int) -> None:
    # A check mark drawn as lines, so it looks the same in every font.
    a, h = st.advance, st.line
    pts = [(x + 0, y + h * 0.55), (x + a * 0.35, y + h * 0.8), (x + a - 1, y + h * 0.25)]
    draw.line(pts, fill=_c(st, "tick"), width=1 if a < 8 else 2)


def render_pairing(screen: Screen, key: bytes, name: str = "") -> Image.Image:
    """The feed key as a QR code (`HYPERPI:` + base32) as large as the screen allows, dark on light
    for phone cameras, with the z-base-32 key as text where it fits."""
    img, draw = _new(screen, bg=WHITE if screen.mode != "1" else True)
    st = _style(screen)
    ink = BLACK if screen.mode != "1" else 0
    import segno  # imported when first needed: 2 MB of RSS the chat screen does not use

    qr = segno.make(qr_payload(key), error="m", boost_error=False)
    matrix = qr.matrix
    n = len(matrix)
    text = z32_encode(key)
    w, h = screen.width, screen.height
    if w >= h * 1.25:  # landscape: QR on the left, key on the right
        side = h
        scale = side // (n + 2)  # at least one module of quiet zone each side
        qr_px = n * scale
        ox, oy = (side - qr_px) // 2, (h - qr_px) // 2
        text_box = (qr_px + ox * 2 - scale, 0, w, h)
    else:  # square or portrait: key below, if the QR can spare the rows
        text_rows = -(-len(text) // max(1, int(w // st.advance)))
        spare = h - text_rows * st.line
        scale = max(spare // (n + 2), min(w, h) // (n + 2) if spare < (n + 2) * 4 else 0)
        qr_px = n * scale
        ox, oy = (w - qr_px) // 2, max(0, (min(h, spare if scale * (n + 2) <= spare else h) - qr_px) // 2)
        text_box = (0, oy + qr_px + scale, w, h)
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                x, y = ox + c * scale, oy + r * scale
                draw.rectangle((x, y, x + scale - 1, y + scale - 1), fill=ink)
    bx0, by0, bx1, by1 = text_box
    cols = int((bx1 - bx0) // st.advance)
    rows = (by1 - by0) // st.line
    if cols >= 8 and rows >= 1:
        wrapped = textwrap.wrap(text, cols, break_long_words=True)
        if len(wrapped) > rows:  # only part fits: show the start, as key prefixes are shown elsewhere
            wrapped = wrapped[:rows]
            wrapped[-1] = wrapped[-1][:-1] + "~"
        ty = by0 + max(0, (by1 - by0 - len(wrapped) * st.line) // 2)
        for i, row_text in enumerate(wrapped):
            st.text(draw, bx0 + (bx1 - bx0 - len(row_text) * st.advance) // 2, ty + i * st.line, row_text, ink)
    return img
