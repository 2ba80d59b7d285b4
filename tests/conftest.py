"""Fixtures shared by every test folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "fixtures" / "vectors.json"
NODE_PEERS = ROOT / "tests" / "interop" / "node"


@pytest.fixture(scope="session")
def vectors() -> dict:
    """The test vectors the pinned Node modules produced (tests/fixtures/vectors.json, `make vectors`)."""
    return json.loads(VECTORS.read_text())


@pytest.fixture
def hyperpi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh host home ($HYPERPI_HOME) for `hyperpi` commands run in the test."""
    path = tmp_path / "home"
    monkeypatch.setenv("HYPERPI_HOME", str(path))
    return path


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run `hyperpi ARGV...` in-process: (exit code, stdout, stderr)."""
    from hyperpi_host import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def node_peers() -> Path:
    """The folder of the Node reference peers, with hypercore 11 installed by `make test`."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed: `make test` needs Node.js 20 and npm")
    if not (NODE_PEERS / "node_modules" / "hypercore").is_dir():
        pytest.fail(f"Node peers not installed: run `npm ci` in {NODE_PEERS} (make test does)")
    return NODE_PEERS
