"""The board's buttons through gpiozero: a short press and a hold each map to an action.

gpiozero calls back from its own threads, so the callbacks only hand an event to the asyncio
loop (`call_soon_threadsafe`) and the UI runs in one thread. A short press fires on release,
so a hold never also counts as a press. Tests and `--simulate` use gpiozero's mock pin factory
and `pin.drive_low()` / `drive_high()`: the same code path as on the Pi.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero import Button

from .boards import ButtonSpec
from .gpio import close_quietly

HOLD_SECONDS = 1.0  # gpiozero's default hold_time; long enough that a firm press is not a hold
# Tactile switches bounce for a few ms; 20 ms of stable level is well under a deliberate tap
# (~100 ms) and stops one press counting twice (lgpio debounces in the kernel driver).
BOUNCE_SECONDS = 0.02


@dataclass(frozen=True)
class ButtonEvent:
    button: str
    action: str
    long: bool


def make_button(spec: ButtonSpec, pin_factory: Any, **options: Any) -> Button:
    """The gpiozero Button for a board's button: pulled up and pressed low, or (pull_up None) an
    undriven line that reads pressed when high."""
    return Button(
        spec.pin,
        pull_up=spec.pull_up,
        active_state=None if spec.pull_up is not None else True,
        pin_factory=pin_factory,
        **options,
    )


class Buttons:
    def __init__(
        self,
        specs: tuple[ButtonSpec, ...],
        deliver: Callable[[ButtonEvent], None],
        loop: asyncio.AbstractEventLoop,
        *,
        hold_time: float = HOLD_SECONDS,
        pin_factory: Any = None,
    ) -> None:
        self._deliver = deliver
        self._loop = loop
        self._held: set[str] = set()
        self.buttons: dict[str, Button] = {}
        for spec in specs:
            button = make_button(spec, pin_factory, bounce_time=BOUNCE_SECONDS, hold_time=hold_time)
            button.when_held = self._on_held(spec)
            button.when_released = self._on_released(spec)
            self.buttons[spec.name] = button

    def _on_held(self, spec: ButtonSpec) -> Callable[[], None]:
        def held() -> None:
            self._held.add(spec.name)
            self._loop.call_soon_threadsafe(self._deliver, ButtonEvent(spec.name, spec.hold, True))

        return held

    def _on_released(self, spec: ButtonSpec) -> Callable[[], None]:
        def released() -> None:
            if spec.name in self._held:
                self._held.discard(spec.name)
                return
            self._loop.call_soon_threadsafe(self._deliver, ButtonEvent(spec.name, spec.press, False))

        return released

    def pin(self, name: str) -> Any:
        """The gpiozero pin of a button (a MockPin under the mock factory)."""
        return self.buttons[name].pin

    def close(self) -> None:
        for name, button in self.buttons.items():
            close_quietly(button.close, f"button {name}")
        self.buttons.clear()
