"""examples/single_chat.py and single_chat_viewer.py (the tutorial on `hyperpi.Feed`) against
the Node tutorial scripts beside them (examples/single-chat*.js, which are
tests/interop/node/single-chat*.js): each direction, either side dialling, either side the
Noise initiator. Real processes over loopback TCP; no mDNS, no DHT.

A message written after the viewer printed the history must arrive live over the same connection.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperpi import Feed
from tests.interop.test_chat_interop import STEP_TIMEOUT, Proc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def python(script: str, *args: object) -> list[str]:
    return [sys.executable, str(EXAMPLES / script), *map(str, args)]


def node(script: str, *args: object) -> list[str]:
    return ["node", str(EXAMPLES / script), *map(str, args)]


def message(line: str) -> tuple[str, str]:
    value = json.loads(line)
    assert value["type"] == "chat" and isinstance(value["time"], int), line
    return value["nick"], value["text"]


def role_flags(initiator: bool) -> list[str]:
    return ["--initiator" if initiator else "--responder"]


@pytest.fixture
def procs(node_peers: Path) -> Iterator[list[Proc]]:
    """Processes to stop after the test (node_peers: Node and the pinned modules are installed)."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start_pair(
    procs: list[Proc],
    writer: list[str],
    viewer: list[str],
    python_is_writer: bool,
    python_dials: bool,
    python_initiates: bool,
) -> tuple[Proc, Proc]:
    """Start the listening side first, then the dialling one; returns (writer, viewer)."""
    python_args, node_args = (writer, viewer) if python_is_writer else (viewer, writer)
    python_args += role_flags(python_initiates)
    node_args += role_flags(not python_initiates)
    listener_args, dialler_args = (node_args, python_args) if python_dials else (python_args, node_args)
    listener = Proc([*listener_args, "--listen", "127.0.0.1:0"])
    procs.append(listener)
    dialler = Proc([*dialler_args, "--connect", f"127.0.0.1:{listener.listening_port()}"])
    procs.append(dialler)
    return (listener, dialler) if (listener_args is writer) else (dialler, listener)


CASES = pytest.mark.parametrize(
    ("python_dials", "python_initiates"),
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["py-dials-initiator", "py-dials-responder", "py-listens-initiator", "py-listens-responder"],
)


@CASES
def test_python_writer_to_node_viewer(
    procs: list[Proc], tmp_path: Path, python_dials: bool, python_initiates: bool
) -> None:
    with Feed(tmp_path / "py", value_encoding="json") as feed:  # the example's feed, made by the library
        feed.append({"type": "chat", "text": "history", "time": 1, "nick": "py"})
        key = feed.id
    writer, viewer = start_pair(
        procs,
        python("single_chat.py", tmp_path / "py", "--nick", "py"),
        node("single-chat-viewer.js", key, tmp_path / "node", "--json"),
        python_is_writer=True,
        python_dials=python_dials,
        python_initiates=python_initiates,
    )
    assert writer.line() == key  # the same feed, reopened by name
    assert message(viewer.line()) == ("py", "history")
    writer.write("live from python")
    assert writer.line() == "appended 2"
    assert message(viewer.line()) == ("py", "live from python")
    assert "replication stream closed" not in viewer.stderr


@CASES
def test_node_writer_to_python_viewer(
    procs: list[Proc], tmp_path: Path, python_dials: bool, python_initiates: bool
) -> None:
    offline = Proc(node("single-chat.js", tmp_path / "node", "--nick", "ana"))
    procs.append(offline)
    key = offline.line()
    offline.write("history")
    assert offline.line() == "appended 1"
    offline.close_stdin()
    assert offline.wait() == 0
    writer, viewer = start_pair(
        procs,
        node("single-chat.js", tmp_path / "node", "--nick", "ana"),
        python("single_chat_viewer.py", key, tmp_path / "py", "--json"),
        python_is_writer=False,
        python_dials=python_dials,
        python_initiates=python_initiates,
    )
    assert writer.line() == key
    assert message(viewer.line()) == ("ana", "history")
    writer.write("live from node")
    assert writer.line() == "appended 2"
    assert message(viewer.line()) == ("ana", "live from node")
    assert viewer.stop() == -15  # still running (no error exit), and SIGTERM ends it
    assert "Traceback" not in viewer.stderr
    with Feed(tmp_path / "py", key) as copy:
        assert copy.length == 2 and copy.has(1)
        copy.core.audit()


def test_python_viewer_prints_the_history_and_exits_after_n(procs: list[Proc], tmp_path: Path) -> None:
    with Feed(tmp_path / "py", value_encoding="json") as feed:
        feed.append({"type": "chat", "text": "one \x1b[31m", "time": 1, "nick": "py"}, ["not", "a", "chat"])
        key = feed.id
    writer = Proc(python("single_chat.py", tmp_path / "py", "--listen", "127.0.0.1:0"))
    procs.append(writer)
    viewer = Proc(
        python(
            "single_chat_viewer.py",
            key,
            tmp_path / "v",
            "--connect",
            f"127.0.0.1:{writer.listening_port()}",
            "--exit-after",
            "2",
        )
    )
    procs.append(viewer)
    assert viewer.lines(2) == ["<py> one [31m", '["not", "a", "chat"]']  # a terminal escape is not passed on
    assert viewer.wait(STEP_TIMEOUT) == 0


def test_python_viewer_refuses_a_bad_key_in_one_line(procs: list[Proc], tmp_path: Path) -> None:
    viewer = Proc(python("single_chat_viewer.py", "not-a-key", tmp_path))
    procs.append(viewer)
    assert viewer.wait() == 1
    assert viewer.stderr_lines[:1] == [
        "single_chat_viewer: not a key: expected 52 z-base-32 characters, 64 hex digits or HYPERPI:..., "
        "got 9 characters"
    ]
