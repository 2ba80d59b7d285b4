"""`hyperpi.Feed` (firmware/hyperpi/feed.py): values, waiting reads, and replication over socket
pairs, stream pairs and a loopback swarm, with the Noise role chosen by the caller."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from hyperpi import ConnectionClosed, DecodeError, Feed, NotAvailable
from hyperpi.feed import NAME_FILE_SUFFIX
from hyperpi_host.chat import FEED_FILE

STEP = 10.0  # seconds any one step may take on a loaded machine (each takes milliseconds)


def test_values_round_trip_in_each_encoding(tmp_path: Path) -> None:
    cases: dict[str, list[Any]] = {
        "json": [{"type": "chat", "text": "héllo", "n": [1, None]}, [1, 2], "s", 3, None],
        "utf-8": ["héllo", ""],
        "binary": [b"\x00\xff", b""],
    }
    for encoding, values in cases.items():
        with Feed(tmp_path / encoding, value_encoding=encoding) as feed:
            assert feed.append(values[0]) == 1
            assert feed.append(*values[1:]) == len(values)  # several values, one commit
            assert [asyncio.run(feed.get(i)) for i in range(feed.length)] == values
    with Feed(tmp_path / "json") as raw:  # JSON is stored as compact UTF-8, as Node's JSON.stringify
        assert raw.core.get(0) == '{"type":"chat","text":"héllo","n":[1,null]}'.encode()


def test_wrong_values_and_encodings_are_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="value_encoding must be one of"):
        Feed(tmp_path / "a", value_encoding="yaml")
    with Feed(tmp_path / "b", value_encoding="utf-8") as feed:
        with pytest.raises(TypeError, match="takes str values"):
            feed.append(b"bytes")
        with pytest.raises(TypeError, match="takes str values"):
            feed.append("fine", 3)  # one bad value of several: none is appended
        assert feed.length == 0
    with Feed(tmp_path / "c") as feed, pytest.raises(TypeError, match="takes bytes values"):
        feed.append("text")


def test_json_refuses_nan_and_a_block_that_is_not_json_names_it(tmp_path: Path) -> None:
    with Feed(tmp_path, value_encoding="json") as feed:
        with pytest.raises(ValueError):
            feed.append(float("nan"))  # not JSON: Node could not read it
        feed.core.append([b"\xff not json", b"[" * 100 + b"]" * 100])
        for i in (0, 1):
            with pytest.raises(DecodeError, match=f"block {i} of feed .* is not JSON") as caught:
                asyncio.run(feed.get(i))
            assert "\n" not in str(caught.value)


def test_a_name_opens_the_same_writable_feed_again(tmp_path: Path) -> None:
    with Feed(tmp_path) as first, Feed(tmp_path, name="other") as other:
        key = first.key
        assert first.writable and other.writable and other.key != key
    with Feed(tmp_path) as again:
        assert again.key == key and again.writable
    with Feed(tmp_path, key.hex()) as by_key, Feed(tmp_path, again.id) as by_id:
        assert by_key.key == by_id.key == key and by_key.writable
    assert f"chat{NAME_FILE_SUFFIX}" == FEED_FILE  # name="chat" is the feed `hyperpi chat write` keeps
    with pytest.raises(ValueError, match="a feed name is"):
        Feed(tmp_path, name="../escape")


def test_a_name_whose_secret_key_is_gone_cannot_write(tmp_path: Path) -> None:
    with Feed(tmp_path, name="mine") as feed:
        secret = feed.store.secret_key_path(feed.key)
    secret.unlink()
    with pytest.raises(ValueError, match="no secret key for its feed 'mine'"):
        Feed(tmp_path, name="mine")


async def _waiting_reads(tmp_path: Path) -> None:
    async with Feed(tmp_path, value_encoding="utf-8") as feed:
        with pytest.raises(NotAvailable, match="block 0 of feed"):
            await feed.get(0, wait=False)
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await feed.get(0, timeout=0.01)
        assert not feed._waiters  # a wait that timed out leaves no future behind
        waiting = asyncio.ensure_future(feed.get(1, timeout=STEP))
        await asyncio.sleep(0)
        feed.append("a", "b")
        assert await waiting == "b"
        assert [v async for v in feed.read()] == ["a", "b"]  # ends at the length it had
        assert [v async for v in feed.read(1, 2)] == ["b"]
        seen: list[str] = []

        async def follow() -> None:
            async for value in feed.read(live=True):
                seen.append(value)
                if len(seen) == 3:
                    return

        follower = asyncio.ensure_future(follow())
        await asyncio.sleep(0.01)
        assert seen == ["a", "b"]
        feed.append("c")
        async with asyncio.timeout(STEP):
            await follower
        assert seen == ["a", "b", "c"]


def test_get_waits_and_read_follows_live(tmp_path: Path) -> None:
    asyncio.run(_waiting_reads(tmp_path))


async def _replicate_pair(tmp_path: Path, writer_initiates: bool, over_sockets: bool) -> None:
    async with (
        Feed(tmp_path / "w", value_encoding="json") as writer,
        Feed(tmp_path / "r", writer.id, value_encoding="json") as reader,
    ):
        writer.append({"n": 0}, {"n": 1})
        if over_sockets:
            a, b = socket.socketpair()
            sessions = [
                writer.replicate(a, is_initiator=writer_initiates),
                reader.replicate(b, is_initiator=not writer_initiates),
            ]
        else:
            accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Future()
            server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
            dialled = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            # The reader dials, whatever its Noise role: the role is the caller's choice.
            sessions = [
                writer.replicate(*await accepted, is_initiator=writer_initiates),
                reader.replicate(*dialled, is_initiator=not writer_initiates),
            ]
            server.close()
        tasks = [asyncio.ensure_future(s) for s in sessions]
        async with asyncio.timeout(STEP):
            assert await reader.get(1) == {"n": 1}
            writer.append({"n": "live"})
            assert await reader.get(2) == {"n": "live"}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reader.core.audit()


@pytest.mark.parametrize("writer_initiates", [True, False], ids=["writer-initiator", "writer-responder"])
@pytest.mark.parametrize("over_sockets", [True, False], ids=["socketpair", "streams"])
def test_replicate_with_the_role_the_caller_chooses(tmp_path: Path, writer_initiates: bool, over_sockets: bool) -> None:
    asyncio.run(_replicate_pair(tmp_path, writer_initiates, over_sockets))


async def _two_initiators(tmp_path: Path) -> None:
    async with Feed(tmp_path / "a") as one, Feed(tmp_path / "b") as two:
        a, b = socket.socketpair()
        results = await asyncio.wait_for(
            asyncio.gather(
                one.replicate(a, is_initiator=True), two.replicate(b, is_initiator=True), return_exceptions=True
            ),
            STEP,
        )
        assert all(isinstance(r, ConnectionClosed) for r in results), results


def test_two_initiators_fail_the_handshake_instead_of_hanging(tmp_path: Path) -> None:
    asyncio.run(_two_initiators(tmp_path))


def test_replicate_needs_a_role(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    with Feed(tmp_path) as feed, a, b, pytest.raises(TypeError, match="is_initiator=True on one side"):
        asyncio.run(feed.replicate(a))


async def _swarm(tmp_path: Path) -> None:
    async with Feed(tmp_path / "w", value_encoding="utf-8") as writer:
        writer.append("before")
        swarm = await writer.join(host="127.0.0.1", mdns=False)
        with pytest.raises(RuntimeError, match="aclose"):
            writer.close()
        async with Feed(tmp_path / "r", writer.key, value_encoding="utf-8") as reader:
            joined = await reader.join(host="127.0.0.1", mdns=False, peers=[("127.0.0.1", swarm.port)])
            assert writer.discovery_key in joined.topics
            async with asyncio.timeout(STEP):
                assert await reader.get(0) == "before"
                writer.append("live")
                assert await reader.get(1) == "live"
        assert not joined.connections  # aclose stopped the reader's swarm


def test_join_replicates_with_the_swarm_peers(tmp_path: Path) -> None:
    asyncio.run(_swarm(tmp_path))
