"""`hyperpi.device.network`: two device services replicating over real sockets on loopback
(static peers, no mDNS: nothing leaves this machine). The netns end-to-end test covers mDNS."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperpi.device import network
from hyperpi.device.config import ConfigError, DeviceConfig, Follow, load_config
from hyperpi.device.service import DeviceService
from hyperpi.hypercore import Core, Store, generate_keypair


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def chat(text: str) -> bytes:
    return json.dumps({"type": "chat", "text": text, "time": int(time.time() * 1000), "nick": "ana"}).encode()


def test_two_services_replicate_follow_and_unfollow(tmp_path: Path) -> None:
    async def body() -> None:
        port_a, port_b = free_port(), free_port()
        store_a, store_b = Store(tmp_path / "a"), Store(tmp_path / "b")
        own_a = Core.create(store_a, generate_keypair())
        ana = Core.create(store_a, generate_keypair())  # a feed that only device a has at first
        ana.append([chat("hi from ana")])
        config_a = DeviceConfig(
            name="a", board="headless", listen_host="127.0.0.1", listen_port=port_a, mdns=False,
            peers=(("127.0.0.1", port_b),), follows=(Follow("ana", ana.key),),
        )  # fmt: skip
        config_b = DeviceConfig(
            name="b", board="headless", listen_host="127.0.0.1", listen_port=port_b, mdns=False,
            peers=(("127.0.0.1", port_a),), follows=(Follow("a", own_a.key),),
        )  # fmt: skip
        a = DeviceService(config_a, store_a, own_a)
        b = DeviceService(config_b, store_b, Core.create(store_b, generate_keypair()))
        assert b.app.status() == "no network"  # before the network part reports anything
        a.start()
        b.start()
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(network.run(a, config_a, generate_keypair(), stop)),
            asyncio.ensure_future(network.run(b, config_b, generate_keypair(), stop)),
        ]
        try:
            await until(lambda: a.peers_connected == 1 and b.peers_connected == 1)
            assert b.app.status() == "1 peer"
            # b follows a from its config: a's first message arrives, and a sees it delivered.
            await until(lambda: any(m.text == "a is online" for m in b.timeline.messages()))
            first = next(m for m in a.timeline.messages() if m.feed == own_a.key)
            await until(lambda: a.timeline.delivered(first) == 1)

            # A follow at run time (as from the control feed): the running connection opens a
            # channel for the new feed and the swarm joins its topic.
            b.follow(ana.key, "ana")
            await until(lambda: any(m.text == "hi from ana" for m in b.timeline.messages()))
            assert ana.discovery_key in b_topics(b)
            ana.append([chat("still here")])  # live: travels on the open channel
            await until(lambda: any(m.text == "still here" for m in b.timeline.messages()))

            b.unfollow(ana.key)
            await until(lambda: ana.discovery_key not in b_topics(b))
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
        assert all(t.done() and t.exception() is None for t in tasks)
        for service in (a, b):
            service.close()
        store_a.close()
        store_b.close()

    asyncio.run(body())


def b_topics(service: DeviceService) -> frozenset[bytes]:
    """The topics the service's swarm has joined (found through its cores-changed hook)."""
    hook = service.on_cores_changed
    assert hook is not None
    net = hook.__self__  # type: ignore[attr-defined]
    assert isinstance(net, network.DeviceNetwork) and net.swarm is not None
    assert {c.discovery_key for c in net.cores} == {c.discovery_key for c in service.cores()}
    return net.swarm.topics


def test_network_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text('name = "k"\nlisten_host = "127.0.0.1"\nmdns = false\n')
    config = load_config(path)
    assert (config.listen_host, config.mdns) == ("127.0.0.1", False)
    for line, key in (('mdns = "no"', "'mdns'"), ("listen_host = 5", "'listen_host'")):
        path.write_text(f'name = "k"\n{line}\n')
        with pytest.raises(ConfigError, match=key) as error:
            load_config(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
