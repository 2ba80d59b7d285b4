"""The static checks, run by `make test`: ruff lint and format over the tree, mypy on the sans-IO and
network layers, shellcheck on the shell scripts. Each fails with the tool's own report.

Settings live in pyproject.toml ([tool.ruff], [tool.mypy]); ruff and mypy come with the `test`
extra, shellcheck with tests/system-deps.sh.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# mypy checks the library (these packages, and the modules of its front door); device/ and the
# host tool are type-hinted too but not yet clean.
TYPED_PACKAGES = ["hyperpi.hypercore", "hyperpi.wire", "hyperpi.net"]
TYPED_MODULES = ["hyperpi", "hyperpi.feed", "hyperpi.blockjson"]
CHECK_TIMEOUT = 240  # seconds; a cold mypy cache on a loaded 2-core machine takes ~30 s


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=CHECK_TIMEOUT)


def _shell_scripts() -> list[Path]:
    scripts = [*ROOT.glob("image/**/*.sh"), *ROOT.glob("tests/**/*.sh")]
    return sorted(p for p in scripts if "node_modules" not in p.parts)


def test_ruff_lint() -> None:
    result = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."])
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"


def test_ruff_format() -> None:
    result = _run([sys.executable, "-m", "ruff", "format", "--no-cache", "--check", "."])
    assert result.returncode == 0, (
        f"ruff format would change these (run `ruff format .`):\n{result.stdout}{result.stderr}"
    )


def test_mypy() -> None:
    targets = [arg for name in TYPED_PACKAGES for arg in ("-p", name)]
    targets += [arg for name in TYPED_MODULES for arg in ("-m", name)]
    result = _run([sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / "build" / "mypy-cache"), *targets])
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"


def test_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run tests/system-deps.sh (make test does)"
    scripts = _shell_scripts()
    assert scripts, f"no shell scripts found under {ROOT}/image or {ROOT}/tests"
    # SC1091: a sourced system file (/etc/os-release in image/deps.sh) is not ours to check.
    result = _run([shellcheck, "--exclude=SC1091", *map(str, scripts)])
    assert result.returncode == 0, f"shellcheck found problems:\n{result.stdout}{result.stderr}"
