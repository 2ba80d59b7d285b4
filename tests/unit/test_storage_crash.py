"""Crash safety of the SQLite store: a child process appends in a loop and is SIGKILLed at
random moments, 200 times; every reopen must verify completely and keep every acknowledged
append. (Pulled power, which also loses what the OS had not written, is modelled on the
emulated Pi: tests/image/test_boot.py, the power-cut test.)"""

from __future__ import annotations

import os
import random
import signal
import time

from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.keys import generate_keypair

KILLS = 200
SEED = bytes(range(32))


def _append_until_killed(path: str, out: int) -> None:
    """The child: appends batches of 1-7 blocks and writes `acked N` only after each commit."""
    store = Store(path)
    core = Core.create(store, generate_keypair(SEED))
    os.write(out, b"ready %d\n" % core.length)
    n = core.length
    while True:
        size = 1 + n % 7
        n = core.append([b'{"type":"chat","text":"crash %d","nick":"k"}' % (n + i) for i in range(size)])
        os.write(out, b"acked %d\n" % n)


def _run_child_and_kill(path: str, delay: float) -> list[bytes]:
    """Fork (the child starts with hyperpi imported: no interpreter start-up per kill), let it
    append for `delay` seconds after it is ready, SIGKILL it; its output lines."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_end)
            _append_until_killed(path, write_end)
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        first = pipe.readline()
        if first.startswith(b"ready"):
            time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        rest = pipe.read()
    os.waitpid(pid, 0)
    return [first, *rest.splitlines()]


def test_sigkill_during_appends_never_tears_or_loses_acked_state(tmp_path):
    rng = random.Random(1234)
    with Store(tmp_path) as store:
        key = Core.create(store, generate_keypair(SEED)).key
    last_acked = 0
    lengths = []
    for _ in range(KILLS):
        lines = _run_child_and_kill(str(tmp_path), rng.uniform(0.0, 0.03))
        ready = lines[0].split()
        assert ready[0] == b"ready", ready
        assert int(ready[1]) >= last_acked
        acked = [int(line.split()[1]) for line in lines[1:] if line.startswith(b"acked ")]
        if acked:
            last_acked = max(last_acked, acked[-1])
        with Store(tmp_path) as store:
            core = Core.open(store, key)
            assert core.writable
            assert core.length >= last_acked, "an acknowledged append was lost"
            core.audit()  # every block, node and the signature check out; no block past the head
            lengths.append(core.length)
            last_acked = core.length  # the length can only grow from here
    assert lengths[-1] > 0
    assert len(set(lengths)) > KILLS // 4, "the child should have made progress between kills"
