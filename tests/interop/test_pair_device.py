"""`hyperpi pair` against a real device-side replication over loopback.

The stand-in device is the device's own code: `DeviceService` (which applies control-feed
entries with `hyperpi.device.control`) and its cores replicated by a `Swarm` with the device's
provisioned Noise key, in a thread with its own event loop. The host side is the real CLI,
with `--peer 127.0.0.1:PORT --no-mdns` (no multicast outside network namespaces).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self, TypeVar

import pytest

from hyperpi.device.config import DeviceConfig
from hyperpi.device.service import DeviceService
from hyperpi.hypercore import Core, KeyPair, Store, generate_keypair, z32_encode
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi_host import keys, pair, pairing, provisioning
from tests.unit.test_host_pair import make_device, run

T = TypeVar("T")
WAIT = 10.0  # s; loopback delivery takes well under a second, this only bounds a failure


class DeviceStandIn:
    """A device's service and swarm in a background thread, listening on host:port
    (mDNS off unless asked: only inside network namespaces)."""

    def __init__(
        self,
        state: Path,
        feed: KeyPair,
        noise: KeyPair,
        control_key: bytes,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        mdns: bool = False,
    ) -> None:
        self.state, self.feed, self.noise, self.control_key, self.port = state, feed, noise, control_key, port
        self.host, self.mdns = host, mdns
        self.service: DeviceService | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(WAIT), "the stand-in device did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)

    def call(self, fn: Callable[[DeviceService], T]) -> T:
        """Run `fn(service)` on the device's loop (its cores belong to that thread)."""

        async def inside() -> T:
            assert self.service is not None
            return fn(self.service)

        return asyncio.run_coroutine_threadsafe(inside(), self._loop).result(WAIT)

    def wait_for(self, check: Callable[[DeviceService], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not self.call(check):
            assert time.monotonic() < deadline, "the device never reached the expected state"
            time.sleep(0.05)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        store = Store(self.state / "store")
        own = Core.create(store, self.feed)
        config = DeviceConfig(name="kitchen", board="headless", owner=self.control_key, state_dir=self.state)
        service = DeviceService(config, store, own)
        cores = CoreSet(store, service.cores())

        def cores_changed() -> None:  # what the device's network part does on follow/unfollow
            wanted = {core.discovery_key for core in service.cores()}
            for core in service.cores():
                cores.add(core)
            for core in list(cores):
                if core.discovery_key not in wanted:
                    cores.remove(core)

        service.on_cores_changed = cores_changed
        swarm = Swarm(
            self.noise,
            self.port,
            host=self.host,
            name="kitchen",
            mdns=self.mdns,
            on_connection=lambda conn: replicate(conn, cores),
        )
        for core in service.cores():
            await swarm.join(core.discovery_key)
        await swarm.start()
        self.port = swarm.port
        self.service = service
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await swarm.stop()
            service.close()
            store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def kitchen(hyperpi_home: Path, tmp_path: Path) -> Iterator[tuple[provisioning.Identity, bytes]]:  # noqa: F811
    """Owner `alice`, her device `kitchen` recorded on the host: (its identity, control key)."""
    identity = keys.create_identity("alice", owner=True)
    assert identity.control_feed_key is not None
    yield make_device("kitchen", "alice", tmp_path), identity.control_feed_key


def test_add_waits_until_the_device_follows_then_rm(
    kitchen: tuple[provisioning.Identity, bytes], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    device, control_key = kitchen
    ana = generate_keypair().public_key
    with DeviceStandIn(tmp_path / "device", device.feed, device.noise, control_key) as stand_in:
        net = ("--peer", f"127.0.0.1:{stand_in.port}", "--no-mdns", "--timeout", str(WAIT))
        started = time.monotonic()
        code, out, err = run(capsys, "pair", "add", "kitchen", z32_encode(ana), "--name", "Ana", *net)
        assert code == 0, err
        assert "delivered: kitchen has every entry" in out
        assert "waiting for kitchen" in err  # the progress line (plain lines: stderr is no terminal)
        assert time.monotonic() - started < WAIT  # returned on delivery, not at the timeout
        stand_in.wait_for(lambda s: ana in s.feeds and s.timeline.names.get(ana) == "Ana")

        code, out, _ = run(capsys, "pair", "list", "kitchen")
        assert code == 0 and "Ana" in out and "yes" in out and "pending" not in out

        code, out, err = run(capsys, "pair", "rm", "kitchen", ana.hex(), *net)
        assert code == 0, err
        stand_in.wait_for(lambda s: ana not in s.feeds)
    assert pairing.held_length(pair.load_device("kitchen")) == 2


def test_offline_device_gets_the_entry_from_sync(
    kitchen: tuple[provisioning.Identity, bytes], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    device, control_key = kitchen
    ana, bob = generate_keypair().public_key, generate_keypair().public_key
    port = free_port()  # nobody listens there yet: the device is away
    net = ("--peer", f"127.0.0.1:{port}", "--no-mdns")
    code, out, err = run(capsys, "pair", "add", "kitchen", z32_encode(ana), "--name", "Ana", *net, "--timeout", "1")
    assert code == pair.EXIT_NOT_DELIVERED
    assert "did not get its entries within 1 s" in err and "kept" in err and "hyperpi pair sync" in err
    code, out, err = run(capsys, "pair", "add", "kitchen", z32_encode(bob), "--name", "Bob", "--timeout", "0")
    assert code == pair.EXIT_NOT_DELIVERED
    code, out, err = run(capsys, "pair", "list", "kitchen")
    assert out.count("pending") == 2 and "2 entries not yet on kitchen" in err

    with DeviceStandIn(tmp_path / "device", device.feed, device.noise, control_key, port) as stand_in:
        code, out, err = run(capsys, "pair", "sync", *net, "--timeout", str(WAIT))  # every device
        assert code == 0, err
        assert "delivered: kitchen" in out
        stand_in.wait_for(lambda s: set(s.feeds) == {ana, bob})
    code, out, err = run(capsys, "pair", "list", "kitchen")
    assert "pending" not in out and err == ""


def test_only_the_recorded_device_counts(
    kitchen: tuple[provisioning.Identity, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hyperpi_home: Path,  # noqa: F811
) -> None:
    """A peer with another Noise key replicating the control feed is not the device."""
    device, control_key = kitchen
    ana = generate_keypair().public_key
    impostor = generate_keypair()
    with DeviceStandIn(tmp_path / "other", device.feed, impostor, control_key) as stand_in:
        net = ("--peer", f"127.0.0.1:{stand_in.port}", "--no-mdns")
        code, _, err = run(capsys, "pair", "add", "kitchen", z32_encode(ana), "--name", "Ana", *net, "--timeout", "2")
        assert code == pair.EXIT_NOT_DELIVERED, err
        stand_in.wait_for(lambda s: ana in s.feeds)  # it did replicate the entry...
        assert pairing.held_length(pair.load_device("kitchen")) == 0  # ...but is not kitchen

        # A record without a Noise key (older provisioning) accepts any peer holding the entry.
        record_path = hyperpi_home / "devices" / "kitchen.json"
        record = json.loads(record_path.read_text())
        del record["noise_public_key_hex"]
        record_path.write_text(json.dumps(record))
        code, out, err = run(capsys, "pair", "sync", "kitchen", *net, "--timeout", str(WAIT))
        assert code == 0, err
        assert "delivered: kitchen" in out


def main() -> None:
    """The stand-in as a process (for network namespaces): argv[1] is JSON with state, feed and
    noise (secret keys, hex), control (key, hex), host, port, mdns. Prints `ready PORT`; then each
    stdin line `follows` prints the followed feed keys as a JSON list of hex; EOF stops it."""
    import sys

    options = json.loads(sys.argv[1])

    def pair_of(secret_hex: str) -> KeyPair:
        secret = bytes.fromhex(secret_hex)
        return KeyPair(secret[32:], secret)

    stand_in = DeviceStandIn(
        Path(options["state"]),
        pair_of(options["feed"]),
        pair_of(options["noise"]),
        bytes.fromhex(options["control"]),
        options["port"],
        host=options["host"],
        mdns=options["mdns"],
    )
    with stand_in:
        print(f"ready {stand_in.port}", flush=True)
        for line in sys.stdin:
            if line.strip() == "follows":
                print(json.dumps(sorted(k.hex() for k in stand_in.call(lambda s: list(s.feeds)))), flush=True)


if __name__ == "__main__":
    main()
