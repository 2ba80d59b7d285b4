"""Renderer details the golden frames do not pin down: stand-ins for glyphs a font lacks,
wrapping of unbroken text, and the simulator's terminal picture."""

from __future__ import annotations

from hyperpi.device.main import terminal_art
from hyperpi.device.render import ChatFrame, Line, Screen, _message_rows, drawable, render_chat

OLED, TFT = Screen(128, 64, "1"), Screen(240, 240, "RGB")


def test_stand_ins_for_missing_glyphs() -> None:
    assert drawable("ok 👍 ❤️", OLED) == "ok +1 <3"
    assert drawable("猫 and 🦄", OLED) == "¤ and ¤"
    assert drawable("Ωmega …", OLED) == "¤mega ..."  # the bitmap font is Latin-1 only
    assert drawable("Ωmega …", TFT) == "Ωmega …"  # DejaVu has Greek and the ellipsis
    assert drawable("猫", TFT) == "¤"


def test_unbroken_text_wraps_inside_the_screen() -> None:
    line = Line("Ana", "1m", "x" * 200, b"a")
    rows = _message_rows(line, OLED, 20)
    assert len(rows) == 11 and all(len(text) <= 20 for text, _ in rows)
    assert rows[0] == ("Ana 1m " + "x" * 13, 6)  # the header's 6 characters are drawn as header
    image = render_chat(OLED, ChatFrame("kitchen", "no network", 0, (line,), "Hi", "1/1"))
    assert image.size == (128, 64)


def test_terminal_art_uses_half_blocks() -> None:
    image = render_chat(TFT, ChatFrame("kitchen", "2 peers", 0, (), "Hi", "1/3"))
    art = terminal_art(image, 80)
    rows = art.split("\n")
    assert len(rows) == 40 and all(row.count("▀") == 80 for row in rows)  # 240 px -> 80 cols, 80 rows / 2
    assert "\x1b[38;2;" in rows[0] and rows[0].endswith("\x1b[0m")
