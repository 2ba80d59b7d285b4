"""Durable appends, no forks of the own feed, damage repaired instead of looped on: real
Stores and Cores, real replication (secret-stream, protomux, replicator) on loopback.

- an append that returned is fsynced (a power cut keeps it);
- a device whose store lost its own feed recovers it from a peer before it appends, and its
  new messages continue the feed the peers hold (no second block 0);
- a fork met anyway closes only that feed's channel, logged once; other feeds replicate on;
- a rotten block is served as noData (the asking peer is not dropped) and fetched again;
  a followed feed whose head is damaged is cleared and fetched again; a device starts;
- a full disk is named as such, and a message that cannot be appended is not a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hyperpi.device import network
from hyperpi.device import service as service_module
from hyperpi.device.config import DeviceConfig, Follow
from hyperpi.device.service import DeviceService
from hyperpi.hypercore import Core, CorruptStore, DiskFull, KeyPair, Store, core_key, generate_keypair
from hyperpi.hypercore.storage import DB_NAME, set_aside
from hyperpi.net import stream as ns
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.wire.noise import keypair

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def chat(text: str) -> bytes:
    return json.dumps({"type": "chat", "text": text, "time": int(time.time() * 1000), "nick": "t"}).encode()


def texts(core: Core) -> list[str]:
    return [json.loads(core.get(i))["text"] for i in range(core.length)]


def rot_block(store: Store, key: bytes, index: int) -> None:
    """Damage one stored block value in place, as a bad flash cell would."""
    store.db.execute(
        "UPDATE blocks SET value=? WHERE core=(SELECT id FROM cores WHERE key=?) AND idx=?", (b"rotten", key, index)
    )


class Link:
    """Two CoreSets replicating over one encrypted loopback connection."""

    def __init__(self) -> None:
        self.server_conns: list[ns.EncryptedConnection] = []
        self.tasks: list[asyncio.Future[None]] = []

    async def open(self, client: CoreSet, server: CoreSet) -> ns.EncryptedConnection:
        async def handler(conn: ns.EncryptedConnection) -> None:
            self.server_conns.append(conn)
            await replicate(conn, server)

        self.server = await ns.serve("127.0.0.1", 0, keypair(), handler)
        port = self.server.sockets[0].getsockname()[1]
        conn = await ns.open_connection("127.0.0.1", port, keypair())
        self.tasks.append(asyncio.ensure_future(replicate(conn, client)))
        self.client_conn = conn
        return conn

    async def close(self) -> None:
        self.client_conn.close()
        for conn in self.server_conns:
            conn.close()
        self.server.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)


# --- durable appends ---------------------------------------------------------------------------


def test_an_append_is_fsynced_before_it_returns(tmp_path: Path) -> None:
    # WAL with synchronous=FULL fsyncs the log at every commit; NORMAL (2 = FULL, 1 = NORMAL)
    # left the last commits in the page cache, where a power cut loses them.
    with Store(tmp_path) as store:
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- a lost own feed is recovered, not forked --------------------------------------------------


def device_config(name: str, port: int, peer_port: int, follows: tuple[Follow, ...] = ()) -> DeviceConfig:
    return DeviceConfig(
        name=name, board="headless", listen_host="127.0.0.1", listen_port=port, mdns=False,
        peers=(("127.0.0.1", peer_port),), follows=follows,
    )  # fmt: skip


def test_a_device_that_lost_its_store_recovers_its_feed_before_appending(tmp_path: Path) -> None:
    async def body() -> None:
        port_a, port_b = free_port(), free_port()
        keys_a = generate_keypair()
        config_b = device_config("b", port_b, port_a, follows=(Follow("a", core_key(keys_a.public_key)),))
        store_b = Store(tmp_path / "b")
        b = DeviceService(config_b, store_b, Core.create(store_b, generate_keypair()))

        async def run_a(
            store: Store, recover: bool, during: Callable[[DeviceService], Awaitable[None]]
        ) -> DeviceService:
            own = Core.create(store, keys_a)
            a = DeviceService(device_config("a", port_a, port_b), store, own, recover_own_feed=recover)
            a.start()
            stop = asyncio.Event()
            tasks = [
                asyncio.ensure_future(network.run(a, a.config, generate_keypair(), stop)),
                asyncio.ensure_future(network.run(b, config_b, generate_keypair(), stop)),
            ]
            try:
                await during(a)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 15)
            return a

        # First life: a fresh identity posts "is online" and two messages; b holds all three.
        store_a = Store(tmp_path / "a")

        async def first(a: DeviceService) -> None:
            a.append_chat("one")
            a.append_chat("two")
            await until(lambda: b.feeds[a.own.key].contiguous_length == 3)

        a = await run_a(store_a, False, first)
        a.close()
        store_a.close()

        # Power cut before the WAL reached the disk, or a lost file: cores.db is gone.
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / "a" / (DB_NAME + suffix)).unlink(missing_ok=True)
        store_a = Store(tmp_path / "a")
        assert Core.create(store_a, keys_a).length == 0  # the secret key survived, the feed did not

        async def second(a: DeviceService) -> None:
            assert a.own.length == 0 and a.app.status() == "recovering feed"  # no block 0 appended
            assert a.append_chat("three") is None  # held, not appended below what b holds
            await until(lambda: a.own.length == 4)
            await until(lambda: b.feeds[a.own.key].contiguous_length == 4)

        a = await run_a(store_a, True, second)
        followed = b.feeds[a.own.key]
        assert texts(followed) == ["a is online", "one", "two", "three"]  # one feed, no fork
        followed.audit()
        assert a.app.status() != "recovering feed"
        for service in (a, b):
            service.close()
        store_a.close()
        store_b.close()

    asyncio.run(body())


def test_with_no_peer_a_recovering_device_appends_after_the_grace_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "OWN_FEED_GRACE_SECONDS", 0.2)

    async def body() -> None:
        with Store(tmp_path) as store:
            own = Core.create(store, generate_keypair())
            a = DeviceService(DeviceConfig(name="a", board="headless"), store, own, recover_own_feed=True)
            a.start()
            a.append_chat("held")
            assert own.length == 0
            await until(lambda: own.length == 2, timeout=5)
            assert texts(own) == ["a is online", "held"]
            a.close()

    asyncio.run(body())


# --- a fork met anyway -------------------------------------------------------------------------


def test_a_fork_is_reported_once_and_the_other_feeds_keep_replicating(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        forked_keys: KeyPair = generate_keypair()
        store_x, store_y = Store(tmp_path / "x"), Store(tmp_path / "y")
        # The same key signed two different histories: 3 blocks here, 5 others there.
        forked_x = Core.create(store_x, forked_keys)
        forked_x.append([chat(f"x{i}") for i in range(3)])
        forked_y = Core.create(store_y, forked_keys)
        forked_y.append([chat(f"y{i}") for i in range(5)])
        other = Core.create(store_x, generate_keypair())
        other.append([chat("before")])
        other_y = Core.open(store_y, other.key)
        cores_x, cores_y = CoreSet(store_x, [forked_x, other]), CoreSet(store_y, [forked_y, other_y])

        for attempt in range(2):  # a second connection does not log the fork again
            link = Link()
            conn = await link.open(cores_x, cores_y)
            await until(lambda: any("fork" in r.getMessage() for r in caplog.records))
            other.append([chat(f"live {attempt}")])  # the connection still carries the other feed
            await until(lambda: other_y.contiguous_length == other.length)
            assert not conn.closed and not any(c.closed for c in link.server_conns)
            await link.close()

        assert sum("fork" in r.getMessage() for r in caplog.records) == 1
        assert not any("invalid proof" in r.getMessage() and "fork" not in r.getMessage() for r in caplog.records)
        assert (forked_x.length, forked_y.length) == (3, 5)  # neither took the other's version
        forked_x.audit()
        forked_y.audit()
        store_x.close()
        store_y.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(body())


# --- damage is repaired ------------------------------------------------------------------------


def test_a_rotten_block_is_served_as_no_data_and_fetched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        writer = Core.create(Store(tmp_path / "writer"))
        writer.append([chat(f"m{i}") for i in range(6)])
        middle_store = Store(tmp_path / "middle")
        middle = Core.open(middle_store, writer.key)
        asker = Core.open(Store(tmp_path / "asker"), writer.key)
        middle_set = CoreSet(middle_store, [middle])

        up = Link()  # middle <- writer: middle gets everything
        await up.open(middle_set, CoreSet(writer.store, [writer]))
        await until(lambda: middle.contiguous_length == 6)
        await up.close()

        rot_block(middle_store, writer.key, 2)
        down = Link()  # asker <- middle, which finds block 2 rotten when asked for it
        conn = await down.open(CoreSet(asker.store, [asker]), middle_set)
        await until(lambda: all(asker.has(i) for i in (0, 1, 3, 4, 5)))
        assert not asker.has(2) and not middle.has(2)  # dropped, not served
        assert not conn.closed and not any(c.closed for c in down.server_conns)  # not dropped
        assert any("block 2" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)

        # Connected to the writer all along, the middle asks for the dropped block again at the
        # next news of the feed (a live append), not only on a new connection.
        up = Link()
        await up.open(middle_set, CoreSet(writer.store, [writer]))
        await until(lambda: middle.contiguous_length == 6)
        rot_block(middle_store, writer.key, 4)
        asker2 = Core.open(Store(tmp_path / "asker2"), writer.key)
        down2 = Link()
        await down2.open(CoreSet(asker2.store, [asker2]), middle_set)
        await until(lambda: not middle.has(4))  # asked for by the new reader: found rotten, dropped
        writer.append([chat("live")])
        await until(lambda: middle.contiguous_length == 7)
        middle.audit()
        assert middle.get(2) == writer.get(2) and middle.get(4) == writer.get(4)
        for link in (up, down, down2):
            await link.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(body())


def test_a_device_starts_on_damaged_followed_feeds_and_fetches_them_again(tmp_path: Path) -> None:
    async def body() -> None:
        writer = Core.create(Store(tmp_path / "writer"))
        writer.append([chat(f"m{i}") for i in range(4)])
        rotten = Core.create(Store(tmp_path / "writer2"))
        rotten.append([chat(f"r{i}") for i in range(4)])
        store = Store(tmp_path / "device")
        for feed in (writer, rotten):  # the device held both feeds in full
            copy = Core.open(store, feed.key)
            link = Link()
            await link.open(CoreSet(store, [copy]), CoreSet(feed.store, [feed]))
            await until(lambda copy=copy: copy.contiguous_length == 4)
            await link.close()
        store.close()

        store = Store(tmp_path / "device")
        # One feed's head is damaged (its signature), the other has one rotten block.
        store.db.execute("UPDATE cores SET signature=? WHERE key=?", (b"\x00" * 64, writer.key))
        rot_block(store, rotten.key, 1)
        with pytest.raises(CorruptStore):
            Core.open(store, writer.key)
        config = DeviceConfig(name="d", board="headless", follows=(Follow("w", writer.key), Follow("r", rotten.key)))
        device = DeviceService(config, store, Core.create(store, generate_keypair()))  # starts
        assert device.app.status() == "feed repaired"
        assert device.feeds[writer.key].length == 0  # cleared: fetched again below
        assert device.feeds[rotten.key].contiguous_length == 1  # block 1 dropped

        for feed in (writer, rotten):
            link = Link()
            await link.open(CoreSet(store, device.cores()), CoreSet(feed.store, [feed]))
            await until(lambda key=feed.key: device.feeds[key].contiguous_length == 4)
            await link.close()
        for feed in (writer, rotten):
            device.feeds[feed.key].audit()
            assert [m.text for m in device.timeline.messages() if m.feed == feed.key] == texts(feed)
        device.close()
        store.close()

    asyncio.run(body())


def test_a_damaged_database_is_set_aside_and_a_fresh_one_opens(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(CorruptStore):
        Store(tmp_path)
    aside = set_aside(tmp_path)
    assert aside.read_bytes() == b"not a database" * 100
    with Store(tmp_path) as store:
        assert Core.create(store).length == 0


def test_a_full_disk_is_named_and_a_message_that_cannot_be_sent_is_no_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(tmp_path) as store:
        own = Core.create(store, generate_keypair())
        device = DeviceService(DeviceConfig(name="a", board="headless"), store, own)
        device.append_chat("fits")
        # SQLite's page limit fails writes with SQLITE_FULL, as a full disk does.
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count={pages}")
        for size in (1000, 100, 10):  # fill the pages' free space too
            with pytest.raises(DiskFull, match="disk is full"):
                for _ in range(1000):
                    own.append([b"x" * size])
        length = own.length
        with caplog.at_level(logging.ERROR):
            assert device.append_chat("no room") is None
        assert device.app.status() == "disk full"
        assert any("the disk is full" in r.getMessage() for r in caplog.records)
        store.db.execute("PRAGMA max_page_count=1073741823")  # space freed: appends work again
        assert device.append_chat("fits again") == length
        own.audit()
        device.close()


def test_only_a_device_that_used_its_feed_key_before_waits_to_recover_its_feed(tmp_path: Path) -> None:
    from hyperpi.device.main import has_run_before

    keys = generate_keypair()
    with Store(tmp_path / "store") as store:
        assert not has_run_before(store, keys, tmp_path)  # provisioned: only feed.secret exists
        Core.create(store, keys)  # the first start copies the key into the store
        assert has_run_before(store, keys, tmp_path)
    with Store(tmp_path / "other") as store:  # the store is gone, the unread marks are not
        (tmp_path / "seen.json").write_text("{}")
        assert has_run_before(store, keys, tmp_path)
