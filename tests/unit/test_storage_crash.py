"""Crash safety of the SQLite store: a child process appends in a loop and is SIGKILLed at
random moments; every reopen must verify completely and keep every acknowledged append."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.keys import generate_keypair

KILLS = 60
SEED = bytes(range(32))

CHILD = r"""
import os, sys
from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.keys import generate_keypair
store = Store(sys.argv[1])
core = Core.create(store, generate_keypair(bytes(range(32))))
print("ready", core.length, flush=True)
n = core.length
while True:
    size = 1 + n % 7
    n = core.append([b'{"type":"chat","text":"crash %d","nick":"k"}' % (n + i) for i in range(size)])
    os.write(1, b"acked %d\n" % n)  # printed only after the commit returned
"""


def test_sigkill_during_appends_never_tears_or_loses_acked_state(tmp_path):
    rng = random.Random(1234)
    with Store(tmp_path) as store:
        key = Core.create(store, generate_keypair(SEED)).key
    last_acked = 0
    lengths = []
    for _ in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=os.environ)
        ready = child.stdout.readline().split()
        assert ready[0] == b"ready", ready
        assert int(ready[1]) >= last_acked
        time.sleep(rng.uniform(0.0, 0.03))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        acked = [int(line.split()[1]) for line in out.splitlines() if line.startswith(b"acked ")]
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
