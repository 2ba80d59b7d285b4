"""`hyperpi pair add` with no address given: the host finds the device by mDNS on a real LAN.

The LAN is the network-namespace bridge of `tests/netns` (multicast stays inside it). The
device (namespace a) is the stand-in of `test_pair_device.py` run as a process with mDNS on;
the host (namespace b) is the real `hyperpi` command with its defaults: mDNS, any free port.
"""

from __future__ import annotations

import json
import select
import sys
from pathlib import Path

from hyperpi.hypercore import generate_keypair, z32_encode
from hyperpi_host import keys
from tests.netns.conftest import NetnsLan, lan  # noqa: F401 (fixture)
from tests.unit.test_host_pair import make_device

WAIT = 30.0  # s; mDNS announce (~1.5 s) plus a dial: a few seconds; this only bounds a failure


def read_line(process, timeout: float) -> str:  # type: ignore[no-untyped-def]
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "no answer from the device"
    return process.stdout.readline().strip()


def test_pair_add_finds_the_device_by_mdns(
    lan: NetnsLan,  # noqa: F811 (the fixture imported above)
    hyperpi_home: Path,
    tmp_path: Path,
) -> None:
    owner = keys.create_identity("alice", owner=True)
    assert owner.control_feed_key is not None
    device = make_device("kitchen", "alice", tmp_path)
    options = {
        "state": str(tmp_path / "device"),
        "feed": device.feed.secret_key.hex(),
        "noise": device.noise.secret_key.hex(),
        "control": owner.control_feed_key.hex(),
        "host": "0.0.0.0",
        "port": 49737,
        "mdns": True,
    }
    (tmp_path / "device").mkdir()
    stand_in = lan.python("a", "-m", "tests.interop.test_pair_device", json.dumps(options))
    assert read_line(stand_in, WAIT).startswith("ready ")

    ana = generate_keypair().public_key
    result = lan.run(
        "b",
        "env",
        f"HYPERPI_HOME={hyperpi_home}",
        sys.executable,
        "-m",
        "hyperpi_host.cli",
        "pair",
        "add",
        "kitchen",
        z32_encode(ana),
        "--name",
        "Ana",
        "--timeout",
        str(WAIT),
        timeout=WAIT + 15,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "delivered: kitchen" in result.stdout
    stand_in.stdin.write("follows\n")
    stand_in.stdin.flush()
    assert json.loads(read_line(stand_in, WAIT)) == [ana.hex()]
    stand_in.stdin.close()
    stand_in.wait(timeout=WAIT)
