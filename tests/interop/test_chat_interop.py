"""The tutorial, reproduced: Node's `single-chat.js` / `single-chat-viewer.js` against
`hyperpi chat write` / `hyperpi chat view`, over loopback TCP, in both Noise roles.

Every test runs real processes: the Node peers of `tests/interop/node/` (hypercore 11.39.5)
and the `hyperpi` command (`python -m hyperpi_host.cli`). A message written to the writer's
stdin after the viewer printed the first ones must reach the viewer over the same
connection (live replication). mDNS is always off (`--no-mdns`); only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hyperpi.hypercore import Core, Store, parse_key
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.stream import serve
from hyperpi.wire.noise import keypair

# How long one step (a process printing its next line) may take on a loaded 2-core CI
# machine. Steps take well under a second when the machine is idle.
STEP_TIMEOUT = 30.0
HYPERPI = [sys.executable, "-m", "hyperpi_host.cli"]


class Proc:
    """A child process whose stdout and stderr lines are collected by threads."""

    def __init__(self, args: list[str], cwd: Path | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._stderr_changed = threading.Condition()
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.stdout.put(line.rstrip("\n"))

    def _pump_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._stderr_changed:
                self.stderr_lines.append(line.rstrip("\n"))
                self._stderr_changed.notify_all()
        with self._stderr_changed:
            self.stderr_lines.append("<eof>")
            self._stderr_changed.notify_all()

    def line(self, timeout: float = STEP_TIMEOUT) -> str:
        """The next stdout line."""
        try:
            return self.stdout.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name}: no stdout line in {timeout} s; stderr:\n{self.stderr}") from None

    def lines(self, n: int, timeout: float = STEP_TIMEOUT) -> list[str]:
        return [self.line(timeout) for _ in range(n)]

    def wait_stderr(self, pattern: str, timeout: float = STEP_TIMEOUT) -> re.Match[str]:
        """The first stderr line matching `pattern` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._stderr_changed:
            while True:
                for line in self.stderr_lines:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.stderr_lines and self.stderr_lines[-1] == "<eof>"):
                    raise AssertionError(f"{self.name}: no stderr line matching {pattern!r}; stderr:\n{self.stderr}")
                self._stderr_changed.wait(left)

    def listening_port(self) -> int:
        """The port from `listening on H:P` (hyperpi) or `listening H:P` (Node)."""
        return int(self.wait_stderr(r"listening (?:on )?[\d.]+:(\d+)").group(1))

    def write(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    def wait(self, timeout: float = STEP_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit in {timeout} s; stderr:\n{self.stderr}") from None

    def stop(self) -> int:
        """SIGTERM (both hyperpi and Node end on it), SIGKILL if that is not enough."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    @property
    def name(self) -> str:
        return " ".join(Path(a).name if "/" in a else a for a in self.args[:4])

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


def free_port() -> int:
    """A port nobody listens on now (`hyperpi --listen` takes no port 0; a tiny race is fine
    on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(node_peers: Path, script: str, *args: str | Path) -> list[str]:
    return ["node", str(node_peers / script), *map(str, args)]


def hyperpi(*args: str | Path) -> list[str]:
    return [*HYPERPI, *map(str, args), "--no-mdns", "-v"]


def chat_json(line: str) -> dict:
    value = json.loads(line)
    assert value["type"] == "chat" and isinstance(value["time"], int), line
    return value


def texts(lines: list[str]) -> list[str]:
    return [chat_json(line)["text"] for line in lines]


# --- Node writer -> hyperpi chat view ------------------------------------------------------


def node_writer_with_history(spawn, node_peers: Path, storage: Path, compat: bool) -> str:
    """Run the Node writer once offline to write two messages; return its key (z32)."""
    writer = spawn(node(node_peers, "single-chat.js", storage, "--nick", "ana", *(["--compat"] if compat else [])))
    key = writer.line()
    writer.write("hello from node")
    writer.write("second message")
    assert writer.lines(2) == ["appended 1", "appended 2"]
    writer.close_stdin()
    assert writer.wait() == 0
    return key


@pytest.mark.parametrize("compat", [False, True], ids=["default", "compat"])
@pytest.mark.parametrize("python_dials", [True, False], ids=["python-initiator", "python-responder"])
def test_node_writer_to_hyperpi_view(spawn, node_peers: Path, tmp_path: Path, compat: bool, python_dials: bool) -> None:
    key = node_writer_with_history(spawn, node_peers, tmp_path / "node", compat)
    flags = ["--compat"] if compat else []
    if python_dials:
        writer = spawn(
            node(node_peers, "single-chat.js", tmp_path / "node", "--nick", "ana", "--listen", "127.0.0.1:0", *flags)
        )
        assert writer.line() == key  # same feed, reopened
        port = writer.listening_port()
        viewer = spawn(
            hyperpi("chat", "view", key, "--store", tmp_path / "py", "--json", "--peer", f"127.0.0.1:{port}")
        )
    else:
        viewer = spawn(
            hyperpi("chat", "view", key, "--store", tmp_path / "py", "--json", "--listen", f"127.0.0.1:{free_port()}")
        )
        port = viewer.listening_port()
        writer = spawn(
            node(
                node_peers,
                "single-chat.js",
                tmp_path / "node",
                "--nick",
                "ana",
                "--connect",
                f"127.0.0.1:{port}",
                *flags,
            )
        )
        assert writer.line() == key
    assert texts(viewer.lines(2)) == ["hello from node", "second message"]
    # Live: appended while connected, it arrives over the same connection.
    writer.write("live from node")
    assert writer.line() == "appended 3"
    live = chat_json(viewer.line())
    assert (live["text"], live["nick"]) == ("live from node", "ana")
    assert viewer.stop() == 0
    assert "wrong capability" not in viewer.stderr and "invalid proof" not in viewer.stderr
    # The replicated feed is intact on disk.
    with Store(tmp_path / "py") as store:
        core = Core.open(store, parse_key(key))
        assert core.length == core.contiguous_length == 3
        assert core.compat == compat
        core.audit()


# --- hyperpi chat write -> Node viewer -----------------------------------------------------


def hyperpi_writer_with_history(spawn, store: Path) -> str:
    """Run `hyperpi chat write` once to create the feed with two messages; its key (z32)."""
    writer = spawn(hyperpi("chat", "write", "--store", store, "--nick", "py", "--listen", f"127.0.0.1:{free_port()}"))
    key = writer.line()
    writer.write("hello from python")
    writer.write("second message")
    writer.close_stdin()
    writer.listening_port()
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:  # the appends run on the writer's event loop
        with Store(store) as s:
            if Core.open(s, parse_key(key)).length == 2:
                break
        time.sleep(0.1)
    assert writer.stop() == 0
    return key


@pytest.mark.parametrize("python_dials", [True, False], ids=["python-initiator", "python-responder"])
def test_hyperpi_writer_to_node_viewer(spawn, node_peers: Path, tmp_path: Path, python_dials: bool) -> None:
    key = hyperpi_writer_with_history(spawn, tmp_path / "py")
    viewer_args = node(node_peers, "single-chat-viewer.js", key, tmp_path / "node", "--json")
    if python_dials:
        viewer = spawn([*viewer_args, "--listen", "127.0.0.1:0"])
        port = viewer.listening_port()
        writer = spawn(
            hyperpi("chat", "write", "--store", tmp_path / "py", "--nick", "py", "--peer", f"127.0.0.1:{port}")
        )
    else:
        writer = spawn(
            hyperpi("chat", "write", "--store", tmp_path / "py", "--nick", "py", "--listen", f"127.0.0.1:{free_port()}")
        )
        viewer = spawn([*viewer_args, "--connect", f"127.0.0.1:{writer.listening_port()}"])
    assert writer.line() == key  # the same feed, reopened
    assert texts(viewer.lines(2)) == ["hello from python", "second message"]
    writer.write("live from python")
    live = chat_json(viewer.line())
    assert (live["text"], live["nick"]) == ("live from python", "py")
    assert "replication stream closed" not in viewer.stderr


def test_hyperpi_write_to_hyperpi_view_live(spawn, tmp_path: Path) -> None:
    writer = spawn(
        hyperpi("chat", "write", "--store", tmp_path / "a", "--nick", "bo", "--listen", f"127.0.0.1:{free_port()}")
    )
    key = writer.line()
    port = writer.listening_port()
    writer.write("before the viewer")
    viewer = spawn(
        hyperpi("chat", "view", key, "--store", tmp_path / "b", "--peer", f"127.0.0.1:{port}", "--exit-after", "3")
    )
    assert viewer.line() == "<bo> before the viewer"
    writer.write("live one")
    writer.write("live two \x1b[31m")  # a terminal escape in a message is not passed through
    assert viewer.lines(2) == ["<bo> live one", "<bo> live two [31m"]
    assert viewer.wait() == 0  # --exit-after 3


def test_hyperpi_write_dials_a_listening_hyperpi_view(spawn, tmp_path: Path) -> None:
    key = hyperpi_writer_with_history(spawn, tmp_path / "a")
    viewer = spawn(
        hyperpi("chat", "view", key, "--store", tmp_path / "b", "--json", "--listen", f"127.0.0.1:{free_port()}")
    )
    port = viewer.listening_port()
    writer = spawn(hyperpi("chat", "write", "--store", tmp_path / "a", "--nick", "py", "--peer", f"127.0.0.1:{port}"))
    assert writer.line() == key
    assert texts(viewer.lines(2)) == ["hello from python", "second message"]
    writer.write("live, writer dialled")
    assert texts([viewer.line()]) == ["live, writer dialled"]


def test_hyperpi_view_rejects_a_bad_key_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*HYPERPI, "chat", "view", "not-a-key", "--store", str(tmp_path), "--no-mdns"],
        check=False,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- a compat Python writer (library level) -> Node viewer ---------------------------------


async def _serve_compat_feed(node_peers: Path, tmp_path: Path) -> None:
    with Store(tmp_path / "py") as store:
        core = Core.create(store, compat=True)
        assert core.compat
        core.append(
            [json.dumps({"type": "chat", "text": f"compat {i}", "time": i, "nick": "py"}).encode() for i in range(3)]
        )
        server = await serve("127.0.0.1", 0, keypair(), lambda conn: replicate(conn, CoreSet(store, [core])))
        port = server.sockets[0].getsockname()[1]
        viewer = await asyncio.create_subprocess_exec(
            *node(
                node_peers, "single-chat-viewer.js", core.key.hex(), tmp_path / "node", "--json", "--exit-after", "4"
            ),
            "--connect",
            f"127.0.0.1:{port}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert viewer.stdout is not None
            seen = []
            async with asyncio.timeout(STEP_TIMEOUT):
                for _ in range(3):
                    seen.append(json.loads(await viewer.stdout.readline())["text"])
                assert seen == ["compat 0", "compat 1", "compat 2"]
                core.append([json.dumps({"type": "chat", "text": "compat live", "time": 9, "nick": "py"}).encode()])
                assert json.loads(await viewer.stdout.readline())["text"] == "compat live"
                assert await viewer.wait() == 0
        finally:
            if viewer.returncode is None:
                viewer.kill()
                await viewer.wait()
            server.close()
            await server.wait_closed()


def test_compat_python_writer_to_node_viewer(node_peers: Path, tmp_path: Path) -> None:
    asyncio.run(_serve_compat_feed(node_peers, tmp_path))
