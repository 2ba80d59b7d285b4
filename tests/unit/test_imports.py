"""Every module imports on its own in a fresh interpreter: an import cycle only shows when the
module inside it is the first one imported, which a test run that imports everything hides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"hyperpi": ROOT / "firmware", "hyperpi_host": ROOT / "host"}


def all_modules() -> list[str]:
    names = []
    for package, base in PACKAGES.items():
        for path in sorted((base / package).rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    modules = all_modules()
    assert len(modules) > 40 and "hyperpi.wire.protomux" in modules and "hyperpi_host.cli" in modules
    running = {
        name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stderr=subprocess.PIPE, text=True)
        for name in modules
    }
    failures = {}
    for name, proc in running.items():
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures[name] = err.strip().splitlines()[-1:]
    assert failures == {}
