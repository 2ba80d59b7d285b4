"""Fixtures shared by the interop tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_chat_interop import Proc


@pytest.fixture
def spawn() -> Iterator:
    """spawn(args, cwd=None) -> Proc; every process is stopped after the test."""
    procs: list[Proc] = []

    def start(args: list[str], cwd: Path | None = None) -> Proc:
        proc = Proc(args, cwd)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
