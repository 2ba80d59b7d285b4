"""Swarm rules and static peers on loopback (mDNS off); the LAN cases run in tests/netns.

Real Noise connections over 127.0.0.1 between real Swarm instances in one event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

from hypothesis import given
from hypothesis import strategies as st

from hyperpi.net.stream import EncryptedConnection
from hyperpi.net.swarm import Swarm, keeps_new
from hyperpi.wire.noise import keypair

keys = st.binary(min_size=32, max_size=32)


@given(keys, keys, st.booleans(), st.booleans())
def test_both_peers_keep_the_same_one_of_two_crossed_connections(
    x: bytes, y: bytes, x_sees_p_first: bool, y_sees_p_first: bool
) -> None:
    """P was dialled by X, Q by Y. Whatever order each side saw them in, both keep the same."""
    if x == y:
        return

    def survivor(me: bytes, other: bytes, p_dialled_by_me: bool, p_first: bool) -> str:
        old, new = ("P", "Q") if p_first else ("Q", "P")
        dialled = {"P": p_dialled_by_me, "Q": not p_dialled_by_me}
        return new if keeps_new(me, other, dialled[old], dialled[new]) else old

    kept_by_x = survivor(x, y, True, x_sees_p_first)
    kept_by_y = survivor(y, x, False, y_sees_p_first)
    assert kept_by_x == kept_by_y
    assert kept_by_x == ("P" if x < y else "Q")  # the smaller key's dial wins


def test_same_direction_duplicate_replaces_the_old_one() -> None:
    # the dialler only dials again after losing the first connection
    assert keeps_new(b"\x01" * 32, b"\x02" * 32, True, True)
    assert keeps_new(b"\x01" * 32, b"\x02" * 32, False, False)


def seeded(name: str):  # noqa: ANN201 - a Keypair
    return keypair(hashlib.blake2b(name.encode(), digest_size=32).digest())


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def greeter(name: str, inbox: list[tuple[str, bytes]]) -> Callable[[EncryptedConnection], Awaitable[None]]:
    async def on_connection(conn: EncryptedConnection) -> None:
        await conn.send(name.encode())
        async for message in conn:
            inbox.append((name, message))

    return on_connection


def test_static_peers_dialling_each_other_end_with_one_shared_connection() -> None:
    async def scenario() -> None:
        inbox: list[tuple[str, bytes]] = []
        a = Swarm(seeded("a"), 0, host="127.0.0.1", mdns=False, on_connection=greeter("a", inbox))
        b = Swarm(seeded("b"), 0, host="127.0.0.1", mdns=False, on_connection=greeter("b", inbox))
        await a.start()
        await b.start()
        try:
            # both dial at once: a duplicate pair, resolved the same way on both sides
            a.add_peer("127.0.0.1", b.port)
            b.add_peer("127.0.0.1", a.port)
            await wait_until(
                lambda: set(a.connections) == {b.keypair.public_key} and set(b.connections) == {a.keypair.public_key}
            )
            await asyncio.sleep(0.5)  # nothing may flap afterwards
            a_side = a.connections[b.keypair.public_key]
            b_side = b.connections[a.keypair.public_key]
            assert a_side.handshake_hash == b_side.handshake_hash
            assert a_side.is_initiator != b_side.is_initiator
            smaller = min(a.keypair.public_key, b.keypair.public_key)
            dialler = a if a_side.is_initiator else b
            assert dialler.keypair.public_key == smaller
            await wait_until(lambda: ("a", b"b") in inbox and ("b", b"a") in inbox)
        finally:
            await a.stop()
            await b.stop()
        assert a.connections == {} and b.connections == {}

    asyncio.run(scenario())


def test_reconnects_when_a_static_peer_comes_back() -> None:
    async def scenario() -> None:
        b = Swarm(seeded("b"), 0, host="127.0.0.1", mdns=False)
        await b.start()
        port = b.port
        a = Swarm(seeded("a"), 0, host="127.0.0.1", mdns=False, peers=[("127.0.0.1", port)])
        await a.start()
        try:
            await wait_until(lambda: b.keypair.public_key in a.connections)
            first = a.connections[b.keypair.public_key]
            await b.stop()
            await wait_until(lambda: not a.connections)
            b = Swarm(seeded("b"), port, host="127.0.0.1", mdns=False)
            await b.start()
            await wait_until(lambda: b.keypair.public_key in a.connections)
            assert a.connections[b.keypair.public_key] is not first
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_dialling_ourselves_is_noticed_and_stopped() -> None:
    async def scenario() -> None:
        a = Swarm(seeded("a"), 0, host="127.0.0.1", mdns=False)
        await a.start()
        try:
            a.add_peer("127.0.0.1", a.port)
            await wait_until(lambda: ("127.0.0.1", a.port) in a._own_addresses)
            await asyncio.sleep(0.3)
            assert a.connections == {}
            assert ("127.0.0.1", a.port) not in a._dialling  # no retry loop against ourselves
        finally:
            await a.stop()

    asyncio.run(scenario())


def test_a_peer_reachable_at_two_addresses_gets_one_connection() -> None:
    # eth0 and wlan0 on the same LAN: both addresses are dialled, one connection remains
    async def scenario() -> None:
        b = Swarm(seeded("b"), 0, host="127.0.0.1", mdns=False)
        await b.start()
        a = Swarm(
            seeded("a"), 0, host="127.0.0.1", mdns=False, peers=[("127.0.0.1", b.port), ("localhost", b.port)]
        )  # two names, one peer
        await a.start()
        try:
            await wait_until(lambda: b.keypair.public_key in a.connections)
            await asyncio.sleep(1.0)
            assert list(a.connections) == [b.keypair.public_key]
            assert list(b.connections) == [a.keypair.public_key]
            assert (
                a.connections[b.keypair.public_key].handshake_hash == b.connections[a.keypair.public_key].handshake_hash
            )
            # the connection that survived stays: nothing flaps between the two addresses
            kept = a.connections[b.keypair.public_key]
            await asyncio.sleep(1.0)
            assert a.connections[b.keypair.public_key] is kept
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())
