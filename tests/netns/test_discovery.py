"""Discovery over real multicast between network namespaces (see conftest.py for the LAN).

Each device runs a small agent process inside its namespace: it starts a `Discovery`,
obeys commands on stdin (`announce HEX...`, `peers`, `stop`) and prints one JSON line
per event on stdout, so the test can watch what each device sees.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.netns.conftest import JsonLinesAgent, NetnsLan

AGENT = r"""
import asyncio, json, sys
from hyperpi.net.discovery import Discovery

def emit(**event):
    print(json.dumps(event), flush=True)

async def main(name, port):
    discovery = Discovery(
        None if port == 0 else port, name,
        on_candidate=lambda topic, host, p: emit(event="candidate", topic=topic.hex(), host=host, port=p),
    )
    await discovery.start()
    emit(event="started", name=discovery.name)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "stop":
            break
        if line[0] == "announce":
            await discovery.announce(bytes.fromhex(t) for t in line[1:])
            emit(event="announced", topics=line[1:])
        elif line[0] == "peers":
            emit(event="peers", peers=[
                {"name": p.name, "addresses": list(p.addresses), "port": p.port,
                 "topics": sorted(t.hex() for t in p.topics)} for p in discovery.peers()])
    await discovery.stop()
    emit(event="stopped")

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

TOPIC_1 = hashlib.blake2b(b"topic one", digest_size=32).digest()
TOPIC_2 = hashlib.blake2b(b"topic two", digest_size=32).digest()
# A topic whose bytes include "=", NUL and non-UTF-8: TXT values must carry raw bytes.
TOPIC_RAW = b"=\x00\xff" + bytes(range(29))
SEEN_WITHIN = 10.0  # seconds; discovery on an idle bridge takes well under one


class Agent(JsonLinesAgent):
    """A Discovery running in one namespace, driven over stdin/stdout."""

    timeout = SEEN_WITHIN

    def __init__(self, lan: NetnsLan, device: str, port: int) -> None:
        super().__init__(device, lan.python(device, "-c", AGENT, f"dev-{device}", str(port)))
        self.name = self.wait_for("started", timeout=15)["name"]

    def peers(self) -> dict[str, dict[str, Any]]:
        start = self.send("peers")
        return {peer["name"]: peer for peer in self.wait_for("peers", since=start)["peers"]}

    def wait_peers(self, predicate: Any, timeout: float = SEEN_WITHIN) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            peers = self.peers()
            if predicate(peers):
                return peers
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.device}: peers never matched, last seen {peers}")
            time.sleep(0.2)

    def announce(self, *topics: bytes) -> None:
        start = self.send("announce " + " ".join(topic.hex() for topic in topics))
        self.wait_for("announced", since=start)

    def stop(self) -> None:
        start = self.send("stop")
        self.wait_for("stopped", since=start)
        self.process.wait(timeout=10)


pytestmark = pytest.mark.netns


def test_browser_finds_announced_topic_with_address(lan: NetnsLan) -> None:
    writer = Agent(lan, "a", 40001)
    writer.announce(TOPIC_1, TOPIC_RAW)
    viewer = Agent(lan, "b", 40002)
    seen = {
        viewer.wait_for("candidate", topic=TOPIC_1.hex())["host"],
        viewer.wait_for("candidate", topic=TOPIC_RAW.hex())["host"],
    }
    assert seen == {lan.addresses["a"]}
    peer = viewer.peers()[writer.name]
    assert peer == {
        "name": writer.name,
        "addresses": [lan.addresses["a"]],
        "port": 40001,
        "topics": sorted([TOPIC_1.hex(), TOPIC_RAW.hex()]),
    }
    # and the writer sees the viewer (which announces nothing yet), never itself
    peers = writer.wait_peers(lambda p: viewer.name in p)
    assert writer.name not in peers and peers[viewer.name]["topics"] == []


def test_topic_update_in_place_and_other_topics_stay_apart(lan: NetnsLan) -> None:
    a = Agent(lan, "a", 40001)
    b = Agent(lan, "b", 40002)
    c = Agent(lan, "c", 40003)
    a.announce(TOPIC_1)
    c.announce(TOPIC_2)
    b.wait_for("candidate", topic=TOPIC_1.hex(), host=lan.addresses["a"], port=40001)
    peers = b.wait_peers(lambda p: p.get(c.name, {}).get("topics") == [TOPIC_2.hex()])
    assert peers[a.name]["topics"] == [TOPIC_1.hex()]  # c's topic is not a's
    # a joins topic 2: the same instance is updated, no second one appears
    a.announce(TOPIC_1, TOPIC_2)
    event = b.wait_for("candidate", topic=TOPIC_2.hex(), host=lan.addresses["a"])
    assert event["port"] == 40001
    peers = b.peers()
    assert sorted(peers) == sorted([a.name, c.name])
    assert peers[a.name]["topics"] == sorted([TOPIC_1.hex(), TOPIC_2.hex()])
    # a leaves topic 1: the record shrinks
    a.announce(TOPIC_2)
    b.wait_peers(lambda p: p[a.name]["topics"] == [TOPIC_2.hex()])


def test_unregister_sends_goodbye(lan: NetnsLan) -> None:
    a = Agent(lan, "a", 40001)
    a.announce(TOPIC_1)
    b = Agent(lan, "b", 40002)
    b.wait_peers(lambda p: a.name in p)
    a.stop()
    # a goodbye (TTL 0) removes the record within about a second, not the 75 min TTL
    b.wait_peers(lambda p: a.name not in p, timeout=5)


def test_address_that_arrives_after_start_is_published(lan: NetnsLan) -> None:
    # a device that boots before DHCP answers: no address at start, one a little later
    a = Agent(lan, "a", 40001)
    lan.remove_address("b")
    b = Agent(lan, "b", 40002)
    b.announce(TOPIC_1)
    time.sleep(1.0)
    assert b.name not in a.peers()  # no address, no mDNS on eth0: nobody can see b yet
    lan.add_address("b")
    # within ADDRESS_CHECK_INTERVAL (5 s) plus an announcement
    event = a.wait_for("candidate", topic=TOPIC_1.hex(), timeout=SEEN_WITHIN)
    assert (event["host"], event["port"]) == (lan.addresses["b"], 40002)


def test_hyperpi_devices_lists_peers(lan: NetnsLan) -> None:
    a = Agent(lan, "a", 40001)
    a.announce(TOPIC_1, TOPIC_2)
    b = Agent(lan, "b", 40002)
    b.announce(TOPIC_1)
    listing = lan.run("c", sys.executable, "-m", "hyperpi_host.cli", "devices", "--timeout", "2")
    lines = listing.stdout.splitlines()
    assert any(line.split() == [a.name, f"{lan.addresses['a']}:40001", "2"] for line in lines), lines
    assert any(line.split() == [b.name, f"{lan.addresses['b']}:40002", "1"] for line in lines), lines


def test_hyperpi_devices_with_nobody_around(lan: NetnsLan) -> None:
    listing = lan.run("c", sys.executable, "-m", "hyperpi_host.cli", "devices", "--timeout", "0.5")
    assert "no hyperpi devices" in listing.stdout
    assert listing.returncode == 0


def test_namespaces_are_removed_afterwards() -> None:
    # Runs after the tests above (file order): nothing of this run remains, and the root
    # namespace never got a veth or bridge of ours.
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"hpt{os.getpid()}-" not in namespaces
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not re.search(r"^\d+: (v[abc]|br0)[@:]", links, re.MULTILINE), links
