"""Wheels of this checkout with another version, built in a temporary copy, for the update tests.

`build_wheel(folder, "0.2.0")` copies what `pip wheel` reads (hyperpi_host/release.py
PROJECT_FILES) into `folder`, sets the version in pyproject.toml and hyperpi/__init__.py, and
runs `pip wheel --no-deps` there (never in the checkout: setuptools writes build/ beside the
sources). `broken=True` makes a release whose service raises right after reading its
arguments: `--version` still answers (so it installs), every start crashes (so it is rolled
back).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hyperpi_host.release import copy_checkout

ROOT = Path(__file__).resolve().parent.parent
BROKEN = '    raise RuntimeError("this release is broken on purpose")\n'


def build_wheel(folder: Path, version: str, *, broken: bool = False) -> Path:
    source = folder / f"source-{version}"
    copy_checkout(ROOT, source)
    _replace(source / "pyproject.toml", r'(?m)^version = "[^"]+"$', f'version = "{version}"')
    _replace(source / "firmware/hyperpi/__init__.py", r'(?m)^__version__ = "[^"]+"$', f'__version__ = "{version}"')
    if broken:
        main = source / "firmware/hyperpi/device/main.py"
        text = main.read_text()
        anchor = "    args = parser.parse_args(argv)\n"
        assert anchor in text
        main.write_text(text.replace(anchor, anchor + BROKEN, 1))
    out = folder / f"wheel-{version}"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = out.glob("hyperpi-*.whl")
    return wheel


def _replace(path: Path, pattern: str, new: str) -> None:
    text, count = re.subn(pattern, new, path.read_text())
    assert count == 1, (path, pattern)
    path.write_text(text)
