"""A small progress display for long host operations (flashing, image builds, downloads).

On a terminal it redraws one line on stderr: a bar, bytes done, speed and time left. When
stderr is a file or pipe (CI logs, `2> log`), it prints a plain line every PLAIN_STEP of the
work instead, so logs stay readable. Usage:

    with Progress(total, "writing") as bar:
        bar.update(len(chunk))
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Redrawing more often than ~10 times a second costs CPU and flickers; humans can't read faster.
REDRAW_INTERVAL = 0.1
# In plain (non-terminal) mode, one line per 10% keeps a log short but still shows it is alive.
PLAIN_STEP = 0.10
# ...and at most every this many seconds when the total is unknown.
PLAIN_INTERVAL = 5.0
BAR_WIDTH = 30


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as disk tools print them)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps type checkers happy


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Progress of `total_bytes` of work (None when unknown) under a short `label`."""

    def __init__(self, total_bytes: int | None, label: str, stream: TextIO | None = None) -> None:
        self.total = total_bytes if total_bytes and total_bytes > 0 else None
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_plain_fraction = -1.0
        self._closed = False
        self._draw(force=True)

    def update(self, n: int) -> None:
        """Record `n` more bytes done."""
        self.done += n
        self._draw()

    def close(self) -> None:
        """Draw the final state and end the line; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._draw(force=True, final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, final: bool) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        speed = f"{human_bytes(rate)}/s"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            left = (self.total - self.done) / rate if rate > 0 and not final else 0.0
            tail = f"{_duration(elapsed)}" if final else f"{_duration(left)} left"
            return (
                f"{self.label} [{bar}] {fraction * 100:5.1f}% "
                f"{human_bytes(self.done)}/{human_bytes(self.total)} {speed} {tail}"
            )
        return f"{self.label} {human_bytes(self.done)} {speed} {_duration(elapsed)}"

    def _draw(self, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        if self._tty:
            if not force and now - self._last_draw < REDRAW_INTERVAL:
                return
            self._last_draw = now
            # \r + clear-to-end-of-line: redraw in place without leftovers from a longer line.
            self.stream.write("\r" + self._line(final) + "\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
            return
        if self.total:
            fraction = self.done / self.total
            due = fraction - self._last_plain_fraction >= PLAIN_STEP
        else:
            fraction = 0.0
            due = now - self._last_draw >= PLAIN_INTERVAL
        if force or due:
            self._last_plain_fraction = fraction
            self._last_draw = now
            self.stream.write(self._line(final) + "\n")
            self.stream.flush()
