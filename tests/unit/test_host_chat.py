"""`hyperpi chat write` / `view` as a user runs them (the real command, in a subprocess, on
loopback without mDNS): file modes whatever the umask, a failed append, terminal-safe --json."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from hyperpi.hypercore import Core, Store

HYPERPI = [sys.executable, "-m", "hyperpi_host.cli"]
NOW_MS = 1_700_000_000_000
WAIT = 60.0  # s for one step on a loaded 2-core machine


class Writer:
    """`hyperpi chat write` in a subprocess; its stderr lines collected by a thread."""

    def __init__(self, store: Path, umask: int = 0o022) -> None:
        self.proc = subprocess.Popen(
            [*HYPERPI, "chat", "write", "--store", str(store), "--nick", "ana", "--no-mdns", "--listen", "127.0.0.1:0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, umask=umask,
        )  # fmt: skip
        self.stderr: queue.Queue[str] = queue.Queue()
        self.seen = ""
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.proc.stdout is not None
        self.key = self.proc.stdout.readline().strip()
        self.wait_stderr("listening on")

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.put(line)
        self.stderr.put("<exited>\n")

    def wait_stderr(self, needle: str) -> None:
        deadline = time.monotonic() + WAIT
        while needle not in self.seen:
            assert "<exited>" not in self.seen, self.seen
            self.seen += self.stderr.get(timeout=max(0.01, deadline - time.monotonic()))

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(WAIT)
        self.wait_stderr("<exited>")
        return code


def texts(store: Path) -> list[str]:
    with Store(store) as opened:
        core = Core.open(opened, bytes.fromhex(Path(store, "chat-feed").read_text()))
        return [json.loads(core.get(i))["text"] for i in range(core.length)]


def test_store_files_are_private_under_any_umask(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "store", umask=0)
    try:
        writer.write("hello")
        running = {
            p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "store", *(tmp_path / "store").rglob("*")]
        }
    finally:
        assert writer.stop() == 0
    assert {"cores.db-wal", "cores.db-shm", "noise.secret", "chat-feed"} <= set(running)
    for path in [tmp_path / "store", *(tmp_path / "store").rglob("*")]:
        wanted = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == wanted, path
    assert all(mode in (0o600, 0o700) for mode in running.values()), running


def test_failed_append_keeps_the_line_and_says_so_in_one_line(tmp_path: Path) -> None:
    store = tmp_path / "store"
    writer = Writer(store)
    try:
        # A full disk, as the writer sees it: no file of this process may grow any more
        # (Python ignores SIGXFSZ, so the write fails with EFBIG and SQLite reports an I/O error).
        wal = (store / "cores.db-wal").stat().st_size
        resource.prlimit(writer.proc.pid, resource.RLIMIT_FSIZE, (wal, resource.RLIM_INFINITY))
        writer.write("one")
        writer.write("two")
        writer.wait_stderr("the line is kept")
        resource.prlimit(writer.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        writer.wait_stderr("the kept line is appended")
    finally:
        assert writer.stop() == 0
    assert writer.seen.count("cannot append") == 1 and "Traceback" not in writer.seen, writer.seen
    assert texts(store) == ["one", "two"]

    # Interrupted while the disk is still full: the command says which lines were not appended.
    writer = Writer(store)
    wal = (store / "cores.db-wal").stat().st_size
    resource.prlimit(writer.proc.pid, resource.RLIMIT_FSIZE, (wal, resource.RLIM_INFINITY))
    writer.write("three")
    writer.wait_stderr("the line is kept")
    assert writer.stop() == 1
    assert "stopped with 1 line(s) not appended, from: 'three'" in writer.seen
    assert "Traceback" not in writer.seen, writer.seen
    assert texts(store) == ["one", "two"]


def view_json(store: Path, key: bytes, n: int) -> list[str]:
    out = subprocess.run(
        [*HYPERPI, "chat", "view", key.hex(), "--store", str(store), "--exit-after", str(n), "--json",
         "--no-mdns", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout.split("\n")[:-1]  # not splitlines(): U+2028 or U+0085 must not end a line


def test_view_json_escapes_c1_and_bidi_controls(tmp_path: Path) -> None:
    # C1 CSI, right-to-left override, isolate, line separator, DEL; C1 NEL in the nick.
    message = {
        "type": "chat",
        "text": "a\u009b2Jb\u202egnp.exe\u2066c\u2028d\x7f",
        "time": NOW_MS,
        "nick": "e\u0085vil",
    }
    plain = json.dumps({"type": "chat", "text": "héllo wörld", "time": NOW_MS, "nick": "ana"}, ensure_ascii=False)
    with Store(tmp_path / "store") as store:
        core = Core.create(store)
        core.append([json.dumps(message, ensure_ascii=False).encode(), plain.encode()])
        key = core.key
    escaped, as_stored = view_json(tmp_path / "store", key, 2)
    assert json.loads(escaped) == message  # the same value, the controls as \u escapes
    assert escaped.isascii() and escaped.isprintable(), escaped
    assert as_stored == plain  # readable text is still printed as stored
