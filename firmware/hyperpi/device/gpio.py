"""The one gpiozero pin factory the service uses, for the buttons and the panel's DC/backlight pins.

On Debian's kernel the only way to the pins from an unprivileged user is the GPIO character
device (/dev/gpiochipN): there is no /dev/gpiomem, and /dev/mem is root-only. gpiozero reaches
it through lgpio, so the factory is chosen explicitly (never gpiozero's guess, which would try
RPi.GPIO and /dev/mem first). Three things lgpio and gpiozero 2.0 need help with here:

- `import lgpio` makes a notification FIFO in `$LG_WD` (default: the current directory) and
  chdir()s there; the service's cwd is `/`, read-only under ProtectSystem=strict. LG_WD is set
  to the service's runtime directory (or a temporary one) before the import.
- gpiozero reads the board revision from `/proc/device-tree/system/linux,revision`, which only
  the Pi firmware adds, or a `Revision` line in /proc/cpuinfo, which arm64 kernels never print.
  When both are missing, the revision is derived from `/proc/device-tree/model`.
- lgpio sometimes raises `GPIO busy` while pins are released at shutdown; closing logs and goes on.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("hyperpi.device")

MODEL_FILE = Path("/proc/device-tree/model")
REVISION_FILE = Path("/proc/device-tree/system/linux,revision")
GPIO_CHIP = 0  # pinctrl-bcm2835 / pinctrl-bcm2711: the 54 SoC GPIOs (gpiochip1 is the firmware's expander)

# Board revision codes (new style) by the model string's prefix, longest first. gpiozero needs one
# to name the header pins; the memory size and maker fields it carries are informational only.
MODEL_REVISIONS: tuple[tuple[str, int], ...] = (
    ("Raspberry Pi 3 Model B Plus", 0xA020D3),
    ("Raspberry Pi 3 Model A Plus", 0x9020E0),
    ("Raspberry Pi 3 Model B", 0xA02082),
    ("Raspberry Pi 4 Model B", 0xC03111),
    ("Raspberry Pi 400", 0xC03130),
    ("Raspberry Pi Zero 2 W", 0x902120),
)


class GpioError(Exception):
    """The pins cannot be used; the message says why and what to do, in one line."""


def revision_from_model(model: str) -> int | None:
    """The revision code for a /proc/device-tree/model string, or None for an unknown board."""
    for prefix, revision in MODEL_REVISIONS:
        if model.startswith(prefix):
            return revision
    return None


def board_revision(revision_file: Path = REVISION_FILE, model_file: Path = MODEL_FILE) -> tuple[int, str]:
    """(revision code, where it came from): the firmware's property, else the model string."""
    try:
        data = revision_file.read_bytes()
        if len(data) == 4:
            return int.from_bytes(data, "big"), str(revision_file)
    except OSError:
        pass
    try:
        model = model_file.read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError as e:
        raise GpioError(f"cannot tell which board this is: {revision_file} and {model_file}: {e.strerror}") from None
    revision = revision_from_model(model)
    if revision is None:
        raise GpioError(f"unsupported board {model!r} (hyperpi supports the Pi 3B/3B+/4B and Zero 2 W)")
    return revision, f"{model_file} ({model})"


def prepare_lgpio_workdir() -> str:
    """Point lgpio at a writable folder for its FIFO (before `import lgpio`); returns it."""
    if "LG_WD" not in os.environ:
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if not runtime:  # outside systemd (--check by hand): a private folder, removed at exit
            runtime = tempfile.mkdtemp(prefix="hyperpi-lgpio-")
            atexit.register(shutil.rmtree, runtime, ignore_errors=True)
        os.environ["LG_WD"] = runtime
    return os.environ["LG_WD"]


def lgpio_factory(chip: int = GPIO_CHIP) -> Any:
    """gpiozero's LGPIOFactory on /dev/gpiochip`chip`, with the revision fallback above."""
    prepare_lgpio_workdir()
    cwd = os.getcwd()
    try:
        import lgpio  # noqa: F401  (its import makes the FIFO; fails cleanly if LG_WD is unusable)
        from gpiozero.pins.lgpio import LGPIOFactory
    except ImportError as e:
        raise GpioError(f"lgpio is not installed ({e}); the image ships it, elsewhere `pip install lgpio`") from None
    except Exception as e:  # lgpio raises its own error type when the FIFO cannot be made
        raise GpioError(f"lgpio cannot start in {os.environ['LG_WD']}: {e}") from None
    finally:
        os.chdir(cwd)  # lgpio chdir()s into LG_WD; keep relative paths meaning what they meant

    class Factory(LGPIOFactory):  # type: ignore[misc, valid-type]
        def _get_revision(self) -> int:
            return board_revision()[0]

    device = f"/dev/gpiochip{chip}"
    try:
        return Factory(chip=chip)
    except GpioError:
        raise
    except Exception as e:  # lgpio.error or OSError: no such chip, or no permission
        if not os.path.exists(device):
            raise GpioError(f"{device} does not exist (not a Raspberry Pi, or the GPIO driver is not loaded)") from None
        if not os.access(device, os.R_OK | os.W_OK):
            raise GpioError(f"{device}: permission denied; the service user needs the 'gpio' group") from None
        raise GpioError(f"cannot open {device}: {e}") from None


def pin_factory(simulate: bool) -> Any:
    """The factory for this run: gpiozero's mock pins when simulating, lgpio otherwise."""
    if simulate:
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    return lgpio_factory()


def close_quietly(close: Callable[[], Any], what: str) -> None:
    """Call a gpiozero or luma close(); lgpio's 'GPIO busy' at shutdown is logged, not raised."""
    try:
        close()
    except Exception as e:
        log.warning("closing %s: %s", what, e)
