"""The swarm across network namespaces: mDNS finds peers, one encrypted connection per pair,
and feeds replicate over it with no addresses typed.

Two kinds of agent run inside the namespaces:
- `AGENT`, a bare swarm: joins a topic, prints one JSON line per connection event, and greets
  every peer it connects to over the encrypted connection (who is connected, exactly once);
- `FEED_AGENT`, a device in miniature: its own feed plus the feeds it follows, one swarm,
  `replicate` on every connection; `append TEXT` and `read` on stdin (what reaches whom).
The tutorial commands themselves (`hyperpi chat write` / `view`) run in the first test.
"""

from __future__ import annotations

import hashlib
import json
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import JsonLinesAgent, NetnsLan

AGENT = r"""
import asyncio, json, sys
from hyperpi.net.stream import ConnectionClosed
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

def emit(**event):
    print(json.dumps(event), flush=True)

async def main(options):
    me = options["name"]

    async def on_connection(conn):
        remote = conn.remote_public_key.hex()
        emit(event="connected", remote=remote, initiator=conn.is_initiator,
             hash=conn.handshake_hash.hex())
        await conn.send(("hello from " + me).encode())
        async for message in conn:
            emit(event="message", remote=remote, text=message.decode())
        emit(event="closed", remote=remote, hash=conn.handshake_hash.hex(), reason=conn.close_reason)

    swarm = Swarm(keypair(bytes.fromhex(options["seed"])), options["port"], name=me,
                  mdns=options["mdns"], peers=[tuple(p) for p in options["peers"]],
                  on_connection=on_connection, idle_timeout=options["idle"])
    await swarm.start()
    for topic in options["topics"]:
        await swarm.join(bytes.fromhex(topic))
    emit(event="started", key=swarm.keypair.public_key.hex(), port=swarm.port)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split(maxsplit=1)
        if not line or line[0] == "stop":
            break
        if line[0] == "status":
            emit(event="status", connections=sorted(k.hex() for k in swarm.connections))
        elif line[0] == "join":
            await swarm.join(bytes.fromhex(line[1].strip()))
            emit(event="joined")
        elif line[0] == "send":
            for conn in list(swarm.connections.values()):
                try:
                    await conn.send(line[1].strip().encode())
                except ConnectionClosed:
                    pass
    await swarm.stop()
    emit(event="stopped")

asyncio.run(main(json.loads(sys.argv[1])))
"""

TOPIC = hashlib.blake2b(b"swarm test topic", digest_size=32).digest()
OTHER_TOPIC = hashlib.blake2b(b"nobody else's topic", digest_size=32).digest()
PORT = 49737  # fixed, like a device: a restarted peer comes back on the same port
WITHIN = 15.0  # seconds; on an idle bridge it takes about one


def seed(device: str) -> bytes:
    return hashlib.blake2b(device.encode(), digest_size=32).digest()


class SwarmAgent(JsonLinesAgent):
    """A Swarm running in one namespace, driven over stdin/stdout."""

    timeout = WITHIN

    def __init__(
        self,
        lan: NetnsLan,
        device: str,
        *,
        topics: tuple[bytes, ...] = (TOPIC,),
        mdns: bool = True,
        peers: tuple[tuple[str, int], ...] = (),
        idle: float = 20.0,
    ) -> None:
        options = {
            "name": f"dev-{device}",
            "seed": seed(device).hex(),
            "port": PORT,
            "topics": [t.hex() for t in topics],
            "mdns": mdns,
            "peers": [list(p) for p in peers],
            "idle": idle,
        }
        super().__init__(device, lan.python(device, "-c", AGENT, json.dumps(options)))
        self.key = self.wait_for("started", timeout=20)["key"]

    def connections(self) -> list[str]:
        start = self.send("status")
        return self.wait_for("status", since=start)["connections"]

    def wait_connections(self, expected: set[str], timeout: float = WITHIN) -> None:
        deadline = time.monotonic() + timeout
        while set(self.connections()) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.device}: connections {self.connections()} != {expected}")
            time.sleep(0.2)

    def open_connections(self) -> dict[str, dict[str, Any]]:
        """remote key -> the `connected` event of the connection to it not yet closed."""
        with self.changed:
            events = list(self.events)
        live: dict[str, dict[str, Any]] = {}  # handshake hash -> connected event
        for event in events:
            if event["event"] == "connected":
                live[event["hash"]] = event
            elif event["event"] == "closed":
                del live[event["hash"]]
        by_remote: dict[str, dict[str, Any]] = {}
        for event in live.values():
            assert event["remote"] not in by_remote, f"{self.device}: two live connections to one peer"
            by_remote[event["remote"]] = event
        return by_remote

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


pytestmark = pytest.mark.netns


def settle(*agents: SwarmAgent, expected: dict[str, set[str]]) -> None:
    """Wait until each agent is connected to exactly the expected peers, then check it stays."""
    for agent in agents:
        agent.wait_connections(expected[agent.key])
    time.sleep(1.0)  # duplicate dials resolve in well under a second; nothing may flap after
    for agent in agents:
        assert set(agent.connections()) == expected[agent.key]


def test_two_peers_find_each_other_and_keep_one_connection(lan: NetnsLan) -> None:
    a = SwarmAgent(lan, "a")
    b = SwarmAgent(lan, "b")
    settle(a, b, expected={a.key: {b.key}, b.key: {a.key}})
    a_side, b_side = a.open_connections()[b.key], b.open_connections()[a.key]
    # the same TCP connection on both ends: same Noise handshake, opposite roles
    assert a_side["hash"] == b_side["hash"]
    assert a_side["initiator"] != b_side["initiator"]
    a.wait_for("message", remote=b.key, text="hello from dev-b")
    b.wait_for("message", remote=a.key, text="hello from dev-a")


def test_three_peers_connect_pairwise_and_strangers_stay_apart(lan: NetnsLan) -> None:
    a = SwarmAgent(lan, "a")
    b = SwarmAgent(lan, "b")
    c = SwarmAgent(lan, "c", topics=(OTHER_TOPIC,))
    settle(a, b, c, expected={a.key: {b.key}, b.key: {a.key}, c.key: set()})
    # c joins the shared topic while running: its record is updated in place, everyone meets c
    c.wait_for("joined", since=c.send(f"join {TOPIC.hex()}"))
    settle(a, b, c, expected={a.key: {b.key, c.key}, b.key: {a.key, c.key}, c.key: {a.key, b.key}})
    for x, y in [(a, b), (a, c), (b, c)]:
        assert x.open_connections()[y.key]["hash"] == y.open_connections()[x.key]["hash"]


def test_static_peers_without_mdns(lan: NetnsLan) -> None:
    a = SwarmAgent(lan, "a", mdns=False)
    b = SwarmAgent(lan, "b", mdns=False, peers=((lan.addresses["a"], PORT),))
    c = SwarmAgent(lan, "c", mdns=False)  # same topic, but nobody told it about anyone
    settle(a, b, c, expected={a.key: {b.key}, b.key: {a.key}, c.key: set()})
    b.wait_for("message", remote=a.key, text="hello from dev-a")
    # and with mDNS off nothing was published: `hyperpi devices` in c sees no one
    devices = lan.run("c", sys.executable, "-m", "hyperpi_host.cli", "devices", "--timeout", "1")
    assert "no hyperpi devices" in devices.stdout


# -- replication over the swarm ---------------------------------------------------------

FEED_AGENT = r"""
import asyncio, json, sys
from hyperpi.hypercore import Core, Store, core_key, generate_keypair
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

def emit(**event):
    print(json.dumps(event), flush=True)

async def main(o):
    store = Store(o["store"])
    feeds = {o["name"]: Core.create(store, generate_keypair(bytes.fromhex(o["seed"])))}
    for name, seed in o["follow"].items():
        feeds[name] = Core.open(store, core_key(generate_keypair(bytes.fromhex(seed)).public_key))
    cores = CoreSet(store, feeds.values())
    swarm = Swarm(keypair(bytes.fromhex(o["seed"])), o["port"], name=o["name"],
                  on_connection=lambda conn: replicate(conn, cores), idle_timeout=o["idle"])
    for core in feeds.values():
        await swarm.join(core.discovery_key)
    await swarm.start()
    emit(event="started")
    loop = asyncio.get_running_loop()
    while True:
        command, _, text = (await loop.run_in_executor(None, sys.stdin.readline)).rstrip("\n").partition(" ")
        if command in ("", "stop"):
            break
        if command == "append":
            feeds[o["name"]].append([text.encode()])
            emit(event="appended", text=text)
        elif command == "read":
            emit(event="feeds", peers=len(swarm.connections), feeds={
                name: [core.get(i).decode() for i in range(core.contiguous_length)]
                for name, core in feeds.items()})
    await swarm.stop()
    store.close()
    emit(event="stopped")

asyncio.run(main(json.loads(sys.argv[1])))
"""


class FeedAgent(SwarmAgent):
    """A device in miniature: its own feed and the feeds of `follow`, replicated over a swarm."""

    def __init__(self, lan: NetnsLan, device: str, store: Path, follow: tuple[str, ...], idle: float = 20.0) -> None:
        self.device = device
        options = {
            "name": device,
            "seed": seed(device).hex(),
            "store": str(store),
            "port": PORT,
            "follow": {other: seed(other).hex() for other in follow},
            "idle": idle,
        }
        self.process = lan.python(device, "-c", FEED_AGENT, json.dumps(options))
        self.events = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("started", timeout=20)

    def append(self, text: str) -> None:
        start = self.send(f"append {text}")
        self.wait_for("appended", since=start, text=text)

    def feeds(self) -> dict[str, list[str]]:
        start = self.send("read")
        return self.wait_for("feeds", since=start)["feeds"]

    def wait_feeds(self, expected: dict[str, list[str]], timeout: float = WITHIN) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self.feeds()) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.device}: feeds {seen} != {expected}")
            time.sleep(0.2)


class Lines:
    """Lines of a process's stdout, read with a timeout (a hung peer fails the test, not CI)."""

    def __init__(self, stream: Any) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in stream], daemon=True).start()

    def next(self, timeout: float = WITHIN) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line in {timeout} s") from None


def test_chat_view_finds_the_writer_without_addresses(lan: NetnsLan, tmp_path: Path) -> None:
    hyperpi = (sys.executable, "-m", "hyperpi_host.cli", "chat")
    writer = lan.popen("a", *hyperpi, "write", "--store", str(tmp_path / "writer"), "--nick", "ana", cwd=str(tmp_path))
    assert writer.stdin is not None
    key = Lines(writer.stdout).next(timeout=20).strip()
    writer.stdin.write("written before the viewer came\n")
    writer.stdin.flush()
    viewer = lan.popen(
        "b",
        *hyperpi,
        "view",
        key,
        "--store",
        str(tmp_path / "viewer"),
        "--json",
        "--exit-after",
        "2",
        cwd=str(tmp_path),
    )
    shown = Lines(viewer.stdout)
    first = json.loads(shown.next())
    assert (first["text"], first["nick"]) == ("written before the viewer came", "ana")
    writer.stdin.write("typed while the viewer watches\n")  # live: no reconnect, no restart
    writer.stdin.flush()
    second = json.loads(shown.next())
    assert second["text"] == "typed while the viewer watches"
    assert viewer.wait(timeout=WITHIN) == 0


def test_three_devices_each_follow_the_other_two(lan: NetnsLan, tmp_path: Path) -> None:
    names = ("a", "b", "c")
    agents = {n: FeedAgent(lan, n, tmp_path / n, tuple(o for o in names if o != n)) for n in names}
    for n, agent in agents.items():
        for i in range(3):
            agent.append(f"{n} says {i}")
    everything = {n: [f"{n} says {i}" for i in range(3)] for n in names}
    for agent in agents.values():
        agent.wait_feeds(everything)


def test_killed_device_catches_up_after_restart(lan: NetnsLan, tmp_path: Path) -> None:
    a = FeedAgent(lan, "a", tmp_path / "a", ("b",))
    b = FeedAgent(lan, "b", tmp_path / "b", ("a",))
    a.append("a before")
    b.append("b before")
    both = {"a": ["a before"], "b": ["b before"]}
    a.wait_feeds(both)
    b.wait_feeds(both)
    b.kill()  # no goodbye, no clean close of the store
    a.append("a while b is dead")
    b = FeedAgent(lan, "b", tmp_path / "b", ("a",))  # same store, same identity
    b.append("b after restart")
    after = {"a": ["a before", "a while b is dead"], "b": ["b before", "b after restart"]}
    a.wait_feeds(after)  # a was never restarted
    b.wait_feeds(after)


def test_link_down_and_up_replication_resumes(lan: NetnsLan, tmp_path: Path) -> None:
    # idle timeout 3 s: a 5 s outage kills the connection on both sides, so they must redial
    a = FeedAgent(lan, "a", tmp_path / "a", ("b",), idle=3.0)
    b = FeedAgent(lan, "b", tmp_path / "b", ("a",), idle=3.0)
    a.append("before the outage")
    b.wait_feeds({"a": ["before the outage"], "b": []})
    lan.link_down("b")
    a.append("during the outage")
    time.sleep(5)
    assert b.feeds()["a"] == ["before the outage"]  # really cut off
    lan.link_up("b")
    b.append("after the outage")
    after = {"a": ["before the outage", "during the outage"], "b": ["after the outage"]}
    b.wait_feeds(after, timeout=30)
    a.wait_feeds(after, timeout=30)
