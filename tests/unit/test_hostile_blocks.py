"""Feed content is data: a block of deeply nested JSON (2 KB of `[` then `]`) in any feed a device
follows, in its owner's control feed, or in a feed `hyperpi chat view` prints, is shown as
"[N bytes]" or skipped, logged once per feed, and everything after it still works."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hyperpi.device.config import DeviceConfig, Follow
from hyperpi.device.control import parse_entry
from hyperpi.device.service import DeviceService, chat_block
from hyperpi.hypercore import Core, Store, generate_keypair
from hyperpi_host import keys, pair, pairing
from tests.unit.test_device_control import replicate

NOW = 1_700_000_000.0
NESTED = b"[" * 1000 + b"]" * 1000  # Python's json recurses per level: RecursionError unbounded
HYPERPI = [sys.executable, "-m", "hyperpi_host.cli"]


def test_nested_json_is_refused_with_a_value_error() -> None:
    for block in (NESTED, b'{"type":"follow","key":' + NESTED + b"}", b'{"a":' * 900 + b"1" + b"}" * 900):
        with pytest.raises(ValueError, match="nested deeper"):
            parse_entry(block)


def test_running_device_skips_nested_blocks_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hyperpi.device")
    store = Store(tmp_path / "device")
    ana = Core.create(Store(tmp_path / "ana"))
    owner = Core.create(Store(tmp_path / "owner"), generate_keypair())
    config = DeviceConfig(name="kitchen", board="headless", owner=owner.key, follows=(Follow("Ana", ana.key),))
    service = DeviceService(config, store, Core.create(store), clock=lambda: NOW)

    # Blocks arrive by replication while the device runs, as they do from the LAN.
    ana.append([chat_block("before", "ana", NOW - 3), NESTED, NESTED, chat_block("after", "ana", NOW - 1)])
    replicate(ana, store._cores[ana.key])
    owner.append([NESTED, json.dumps({"type": "rename", "name": "hall"}).encode()])
    replicate(owner, store._cores[owner.key])

    texts = [m.text for m in service.timeline.messages() if m.feed == ana.key]
    assert texts == ["before", f"[{len(NESTED)} bytes]", f"[{len(NESTED)} bytes]", "after"]
    assert service.name == "hall"  # the control entry after the bad one is applied
    refused = [r for r in caplog.records if "not read" in r.getMessage()]
    assert len(refused) == 1 and "Ana" in refused[0].getMessage() and not refused[0].exc_info
    assert "control feed entry 0 skipped: entry refused: JSON nested deeper" in caplog.text
    assert "Traceback" not in caplog.text


def test_device_process_starts_with_nested_blocks_in_its_feeds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store(state / "store") as store:  # feeds as a previous run left them: the bad blocks held
        ana = Core.create(store)
        ana.append([NESTED, chat_block("after the bad block", "ana", NOW)])
        owner = Core.create(store, generate_keypair())
        owner.append([NESTED, json.dumps({"type": "rename", "key": ana.key.hex(), "name": "Ana B."}).encode()])
        ana_key, owner_key = ana.key, owner.key
    (tmp_path / "device.toml").write_text(
        f'name = "kitchen"\nboard = "headless"\nstate_dir = "{state}"\nowner = "{owner_key.hex()}"\n'
        'listen_host = "127.0.0.1"\nlisten_port = 0\nmdns = false\n'
        f'[[follow]]\nname = "Ana"\nkey = "{ana_key.hex()}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperpi.device.main", "--config", str(tmp_path / "device.toml"), "--simulate"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("<exited>")

    threading.Thread(target=pump, daemon=True).start()
    log = ""
    try:
        while "ready in" not in log:
            log += lines.get(timeout=60)
            assert "<exited>" not in log, log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while not lines.empty():
        log += lines.get()
    assert "message from Ana: after the bad block" in log
    assert "control feed: rename Ana B." in log
    assert log.count("not read") == 1 and "Traceback" not in log


def test_pair_replays_control_feed_past_a_nested_entry(hyperpi_home: Path) -> None:
    keys.create_identity("ana", owner=True)
    friend = bytes(range(32))
    device = pair.Device("kitchen", bytes(32), None, keys.load_identity("ana").control_feed_key)
    with keys.open_store() as store:
        control = keys.open_control_feed(store, "ana")
        control.append([NESTED, pairing.follow_entry(device, friend, "Friend")])
        assert [f.name for f in pairing.follows(control, device).values()] == ["Friend"]


def view(store: Path, key: bytes, n: int, *flags: str) -> list[str]:
    out = subprocess.run(
        [*HYPERPI, "chat", "view", key.hex(), "--store", str(store), "--exit-after", str(n),
         "--no-mdns", "--listen", "127.0.0.1:0", *flags],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout.splitlines()


def test_chat_view_prints_past_a_nested_block(tmp_path: Path) -> None:
    with Store(tmp_path / "store") as store:
        core = Core.create(store)
        core.append([NESTED, chat_block("still here", "ana", NOW)])
        key = core.key
    assert view(tmp_path / "store", key, 2) == [f"[{len(NESTED)} bytes]", "<ana> still here"]
    raw, chat = view(tmp_path / "store", key, 2, "--json")
    assert json.loads(raw) == {"type": "raw", "hex": NESTED.hex()}
    assert json.loads(chat)["text"] == "still here"
