"""The SQLite store and Core API: persistence, secret key files, transactions and events,
and clear errors for damaged, truncated or foreign files."""

from __future__ import annotations

import ast
import os
import re
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from hyperpi.hypercore import (
    INVALID_REQUEST,
    NOT_AVAILABLE,
    Core,
    CoreEvent,
    CorruptStore,
    NotWritable,
    ProofUnavailable,
    StorageError,
    Store,
    VerificationError,
)
from hyperpi.hypercore import core as hypercore_core
from hyperpi.hypercore.keys import core_key, generate_keypair
from hyperpi.hypercore.types import BlockRequest, ProofRequest, UpgradeRequest

SEED = bytes(range(32))


def chat(i: int) -> bytes:
    return b'{"type":"chat","text":"hello %d","time":%d,"nick":"t"}' % (i, 1700000000000 + i)


def writer(path, n=0, compat=False) -> tuple[Store, Core]:
    store = Store(path)
    core = Core.create(store, generate_keypair(SEED), compat=compat)
    if n:
        core.append([chat(i) for i in range(n)])
    return store, core


def test_append_get_and_reopen(tmp_path):
    store, core = writer(tmp_path)
    assert (core.length, core.writable, core.contiguous_length) == (0, True, 0)
    assert core.append([chat(0), chat(1)]) == 2
    assert core.append([]) == 2
    assert core.append([chat(2)]) == 3
    assert core.get(1) == chat(1) and core.has(2) and not core.has(3)
    with pytest.raises(KeyError):
        core.get(3)
    key, sig, byte_length = core.key, core.signature, core.byte_length
    store.close()
    with Store(tmp_path) as store:
        again = Core.open(store, key)
        assert (again.length, again.signature, again.byte_length) == (3, sig, byte_length)
        assert again.writable and again.contiguous_length == 3
        assert [again.get(i) for i in range(3)] == [chat(i) for i in range(3)]
        assert again.append([chat(3)]) == 4
        again.audit()
        assert Core.open(store, key) is again  # one object per core per store


def test_many_cores_in_one_store(tmp_path):
    with Store(tmp_path) as store:
        cores = [Core.create(store) for _ in range(3)]
        for n, core in enumerate(cores):
            core.append([chat(i) for i in range(n + 1)])
        reader = Core.open(store, bytes(32))
        assert not reader.writable and reader.length == 0
        with pytest.raises(NotWritable):
            reader.append([b"x"])
    with Store(tmp_path) as store:
        assert [Core.open(store, c.key).length for c in cores] == [1, 2, 3]
        assert len(os.listdir(tmp_path / "keys")) == 3


def test_secret_keys_live_in_0600_files_never_in_the_database(tmp_path):
    keypair = generate_keypair(SEED)
    with Store(tmp_path) as store:
        core = Core.create(store, keypair)
        core.append([chat(0)])
        path = store.secret_key_path(core.key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert path.read_bytes() == keypair.secret_key
    db_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("cores.db*"))
    assert keypair.secret_key[:32] not in db_bytes and keypair.public_key in db_bytes


def test_group_readable_secret_key_is_refused_with_a_fix(tmp_path):
    store, core = writer(tmp_path, 1)
    key = core.key
    store.close()
    os.chmod(tmp_path / "keys" / f"{key.hex()}.secret", 0o640)
    with Store(tmp_path) as store, pytest.raises(StorageError, match="chmod 600"):
        Core.open(store, key)


def test_a_secret_key_file_of_another_core_is_a_clear_error(tmp_path):
    store, core = writer(tmp_path, 1)
    other = Core.open(store, bytes(range(1, 33)))
    store.close()
    secret = tmp_path / "keys" / f"{core.key.hex()}.secret"
    shutil.copy(secret, tmp_path / "keys" / f"{other.key.hex()}.secret")
    with Store(tmp_path) as store, pytest.raises(CorruptStore, match="belongs to another core"):
        Core.open(store, other.key)
    stranger = generate_keypair(bytes(32))
    shutil.copy(secret, tmp_path / "keys" / f"{core_key(stranger.public_key).hex()}.secret")
    with Store(tmp_path) as store, pytest.raises(CorruptStore, match="different secret key"):
        Core.create(store, stranger)


def test_bad_keys_are_value_errors(tmp_path):
    with Store(tmp_path) as store:
        with pytest.raises(ValueError):
            Core.open(store, b"short")
        with pytest.raises(ValueError):
            Core.create(store, generate_keypair(SEED)._replace(public_key=bytes(32)))


def test_transaction_groups_appends_and_events_follow_commit(tmp_path):
    store, core = writer(tmp_path)
    seen: list[tuple[CoreEvent, int]] = []

    def on_event(event: CoreEvent) -> None:
        # Runs after commit: a second connection already sees the new length.
        other = sqlite3.connect(tmp_path / "cores.db")
        (length,) = other.execute("SELECT length FROM cores WHERE key=?", (core.key,)).fetchone()
        other.close()
        seen.append((event, length))

    unsubscribe = core.subscribe(on_event)
    with core.transaction():
        core.append([chat(0)])
        core.append([chat(1), chat(2)])
        assert seen == []
    assert seen == [(CoreEvent("append", 1, None), 3), (CoreEvent("append", 3, None), 3)]
    with pytest.raises(RuntimeError), core.transaction():
        core.append([chat(3)])
        raise RuntimeError("undo")
    assert core.length == 3 and not core.has(3) and len(seen) == 2
    unsubscribe()
    core.append([chat(3)])
    assert len(seen) == 2 and core.length == 4
    core.audit()
    store.close()


def test_a_read_batch_takes_no_write_lock_and_keeps_what_it_repairs(tmp_path):
    """Answers to a peer are read in one `transaction(write=False)`: another connection can
    still write meanwhile, and a damaged block found by those reads stays dropped after it."""
    store, core = writer(tmp_path, 4)
    store.db.execute("UPDATE blocks SET value=? WHERE idx=2", (b"rotten",))
    other = sqlite3.connect(tmp_path / "cores.db", isolation_level=None, timeout=0)
    with store.transaction(write=False):
        assert core.get(1) == chat(1)
        other.execute("BEGIN IMMEDIATE")  # would fail at once if the batch held the write lock
        other.execute("ROLLBACK")
        with pytest.raises(CorruptStore, match="damaged"):
            core.get(2)
    other.close()
    assert store.db.execute("SELECT COUNT(*) FROM blocks WHERE idx=2").fetchone() == (0,)
    assert not core.has(2) and core.get(3) == chat(3)
    store.close()


def test_proof_unavailable_reasons(tmp_path):
    store, core = writer(tmp_path, 4)
    with store:
        with pytest.raises(ProofUnavailable) as info:
            core.proof(ProofRequest(fork=0, block=BlockRequest(9, 0)))
        assert info.value.reason == NOT_AVAILABLE
        with pytest.raises(ProofUnavailable) as info:
            core.proof(ProofRequest(fork=1, block=BlockRequest(0, 0)))
        assert info.value.reason == NOT_AVAILABLE
        with pytest.raises(ProofUnavailable) as info:
            core.proof(ProofRequest(fork=0, upgrade=UpgradeRequest(2, 5)))
        assert info.value.reason == INVALID_REQUEST
        only_manifest = core.proof(ProofRequest(fork=0, manifest=True))
        assert only_manifest.manifest == core.manifest and only_manifest.upgrade is None


def _replicate(writer_core: Core, reader: Core) -> None:
    """Pull everything the way the wire layer will: upgrade (+manifest), then each block."""
    req = ProofRequest(
        fork=writer_core.fork,
        upgrade=UpgradeRequest(reader.length, writer_core.length - reader.length),
        manifest=reader.manifest is None,
    )
    reader.verify_and_apply(writer_core.proof(req))
    for i in range(reader.length):
        if not reader.has(i):
            req = ProofRequest(fork=reader.fork, block=BlockRequest(i, reader.missing_nodes(i)))
            reader.verify_and_apply(writer_core.proof(req))


@pytest.mark.parametrize("compat", [False, True])
def test_reader_follows_a_writer_and_can_serve_others(tmp_path, compat):
    wstore, w = writer(tmp_path / "w", 5, compat=compat)
    with wstore, Store(tmp_path / "r") as rstore, Store(tmp_path / "r2") as r2store:
        reader = Core.open(rstore, w.key)
        events: list[CoreEvent] = []
        reader.subscribe(events.append)
        _replicate(w, reader)
        assert (reader.length, reader.contiguous_length) == (5, 5)
        assert reader.has_manifest is (not compat) and reader.compat is compat
        w.append([chat(i) for i in range(5, 12)])
        _replicate(w, reader)
        assert [reader.get(i) for i in range(12)] == [chat(i) for i in range(12)]
        assert reader.signature == w.signature and reader.roots == w.roots
        assert events[0] == CoreEvent("upgrade", 5, None)
        assert sum(e.kind == "block" for e in events) == 12
        reader.audit()
        # A reader re-serves what it verified: a third core syncs from it alone.
        third = Core.open(r2store, w.key)
        _replicate(reader, third)
        assert third.length == 12 and third.get(11) == chat(11)
        third.audit()


def test_a_dropped_block_keeps_its_leaf_for_the_proofs_of_its_neighbours(tmp_path):
    """A downloaded block's leaf lives in its row only. When the block is found damaged and
    dropped, its leaf (checked against its parent) is kept as a tree node, so the proof of its
    neighbour can still be made; the last block of an odd length keeps its root leaf, so the
    core opens again."""
    wstore, w = writer(tmp_path / "w", 7)
    with wstore:
        with Store(tmp_path / "r") as rstore:
            reader = Core.open(rstore, w.key)
            _replicate(w, reader)
            leaf_rows = "SELECT COUNT(*) FROM nodes WHERE idx=4"  # block 2's leaf: only in its row
            assert rstore.db.execute(leaf_rows).fetchone() == (0,)
            for i in (2, 6):  # 6: its leaf 12 is a root of length 7
                rstore.db.execute("UPDATE blocks SET value=? WHERE idx=?", (b"rotten", i))
                with pytest.raises(CorruptStore, match="damaged"):
                    reader.get(i)
                assert not reader.has(i)
            req = ProofRequest(fork=0, block=BlockRequest(3, 1))  # carries block 2's leaf
            assert reader.proof(req) == w.proof(req)
        with Store(tmp_path / "r") as rstore:
            reopened = Core.open(rstore, w.key)
            assert reopened.length == 7 and not reopened.has(6)
            reopened.audit()
            for i in (2, 6):  # fetched again, checked against the kept leaves
                req = ProofRequest(fork=0, block=BlockRequest(i, reopened.missing_nodes(i)))
                assert req.block is not None and req.block.nodes == 0
                reopened.verify_and_apply(w.proof(req))
            assert reopened.get(2) == chat(2) and reopened.get(6) == chat(6)


def test_failed_verification_stores_nothing(tmp_path):
    wstore, w = writer(tmp_path / "w", 3)
    with wstore, Store(tmp_path / "r") as rstore:
        reader = Core.open(rstore, w.key)
        proof = w.proof(ProofRequest(fork=0, block=BlockRequest(0, 0), upgrade=UpgradeRequest(0, 3), manifest=True))
        bad_manifest = type(proof)(**{**proof.__dict__, "manifest": proof.manifest[:-1] + b"\x00"})
        with pytest.raises(VerificationError, match="manifest"):
            reader.verify_and_apply(bad_manifest)
        no_manifest = type(proof)(**{**proof.__dict__, "manifest": None})
        with pytest.raises(VerificationError, match="signature"):
            reader.verify_and_apply(no_manifest)  # without a manifest it is checked as compat
        assert (reader.length, reader.manifest, reader.has(0)) == (0, None, False)
        reader.verify_and_apply(proof)
        assert reader.length == 3 and reader.get(0) == chat(0)


def test_fresh_reader_adopts_the_writers_fork(tmp_path):
    store = Store(tmp_path / "w")
    core = Core.create(store, generate_keypair(SEED))
    store.db.execute("UPDATE cores SET fork=1 WHERE key=?", (core.key,))  # as after a truncate
    core.reload()
    core.append([chat(0), chat(1)])
    with store, Store(tmp_path / "r") as rstore:
        reader = Core.open(rstore, core.key)
        _replicate(core, reader)
        assert (reader.fork, reader.length) == (1, 2)
        reader.audit()


def test_damaged_database_header_is_a_clear_error(tmp_path):
    store, _ = writer(tmp_path, 20)
    store.close()
    db = tmp_path / "cores.db"
    with open(db, "r+b") as f:
        f.write(b"this is not sqlite at all")
    with pytest.raises(CorruptStore, match="damaged or not a hyperpi store"):
        Store(tmp_path)


def test_truncated_database_is_a_clear_error(tmp_path):
    store, _ = writer(tmp_path, 2000)
    store.close()
    db = tmp_path / "cores.db"
    os.truncate(db, db.stat().st_size // 2)
    with pytest.raises(CorruptStore):
        Store(tmp_path)


def test_flipped_bytes_anywhere_give_clear_errors_only(tmp_path):
    """Damage pages all over the file: each attempt must end in a clean open and a passing
    audit or in CorruptStore, never in another exception."""
    store, core = writer(tmp_path / "orig", 300)
    key = core.key
    store.close()
    size = (tmp_path / "orig" / "cores.db").stat().st_size
    outcomes = set()
    # Page 1 holds the schema and the first rows: probe it densely, the rest more sparsely.
    offsets = [*range(0, 4096, 48), *range(4096, size, max(1, size // 60))]
    for n, offset in enumerate(offsets):
        work = tmp_path / f"w{n}"
        shutil.copytree(tmp_path / "orig", work)
        with open(work / "cores.db", "r+b") as f:
            f.seek(offset)
            chunk = bytearray(f.read(16))
            f.seek(offset)
            f.write(bytes(b ^ 0xA5 for b in chunk))
        try:
            with Store(work) as s:
                c = Core.open(s, key)
                c.audit()
                for i in range(c.length):
                    c.get(i)
            outcomes.add("intact")
        except CorruptStore:
            outcomes.add("corrupt")
        except Exception as error:  # pragma: no cover - shown on failure
            pytest.fail(f"damage at byte {offset} gave {error!r} instead of CorruptStore")
        shutil.rmtree(work)
    assert "corrupt" in outcomes, outcomes


def test_a_foreign_sqlite_file_and_a_bad_path(tmp_path):
    other = sqlite3.connect(tmp_path / "cores.db")
    other.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    other.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    other.commit()
    other.close()
    with pytest.raises(CorruptStore, match="not a hyperpi store"):
        Store(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot use"):
        Store(tmp_path / "file")


def test_manifest_only_exchange(tmp_path):
    """An empty writer still proves its key: a reader asks for the manifest alone, and a
    request for a missing block with the manifest flag gets the manifest back."""
    wstore, w = writer(tmp_path / "w")
    with wstore, Store(tmp_path / "r") as rstore:
        reader = Core.open(rstore, w.key)
        assert reader.manifest is None and reader.compat
        assert reader.verify_and_apply(w.proof(ProofRequest(fork=0, manifest=True))) == []
        assert reader.manifest == w.manifest and reader.has_manifest and not reader.compat
        w.append([chat(0)])
        answer = w.proof(ProofRequest(fork=0, block=BlockRequest(5, 0), manifest=True))
        assert answer.block is None and answer.manifest == w.manifest
        with pytest.raises(ProofUnavailable):
            w.proof(ProofRequest(fork=0, block=BlockRequest(5, 0)))


def test_key_pairs_never_show_their_secret():
    keypair = generate_keypair(SEED)
    shown = repr(keypair) + str(keypair) + f"{keypair}"
    assert keypair.secret_key.hex()[:16] not in shown and "hidden" in shown
    assert keypair.public_key.hex() in shown


def test_a_full_disk_fails_the_append_and_loses_nothing(tmp_path):
    store, core = writer(tmp_path, 3)
    with store:
        (pages,) = store.db.execute("PRAGMA page_count").fetchone()
        store.db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full from here on
        with pytest.raises(StorageError, match="full") as info:
            core.append([bytes(100_000)])
        assert not isinstance(info.value, CorruptStore)
        assert core.length == 3 and not core.has(3)
        store.db.execute("PRAGMA max_page_count=1073741823")
        assert core.append([chat(3)]) == 4
        core.audit()


def test_a_failing_subscriber_does_not_fail_the_append(tmp_path, caplog):
    store, core = writer(tmp_path)
    seen = []

    def broken(event):
        raise RuntimeError("listener bug")

    core.subscribe(broken)
    core.subscribe(seen.append)
    with store:
        assert core.append([chat(0)]) == 1
    assert seen == [CoreEvent("append", 1, None)]
    assert "listener bug" in caplog.text


def test_a_damaged_secret_key_file_is_refused_before_signing(tmp_path):
    store, core = writer(tmp_path, 1)
    key = core.key
    store.close()
    path = tmp_path / "keys" / f"{key.hex()}.secret"
    data = bytearray(path.read_bytes())
    data[3] ^= 1  # the seed half no longer makes the public half
    path.write_bytes(bytes(data))
    with Store(tmp_path) as store, pytest.raises(CorruptStore, match="damaged"):
        Core.open(store, key)
    path.write_bytes(bytes(data[:40]))
    with Store(tmp_path) as store, pytest.raises(CorruptStore, match="damaged"):
        Core.open(store, key)


def test_the_store_owns_its_sql():
    """Core reads and writes its rows through Store's named methods: core.py holds no SQL, no
    sqlite3 and none of the store's private parts (hyperpi/hypercore/storage.py)."""
    source = Path(hypercore_core.__file__).read_text()
    tree = ast.parse(source)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in strings if re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\b", s)]
    assert "sqlite3" not in {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    privates = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and ast.unparse(n.value).endswith("store")
    }
    assert privates == set()
    assert not re.search(r"\.db\b", source)


def test_the_page_cache_is_set_by_the_store(tmp_path) -> None:
    store = Store(tmp_path / "s", cache_kib=512)  # what the device asks for (device/main.py)
    try:
        assert store.db.execute("PRAGMA cache_size").fetchone()[0] == -512
    finally:
        store.close()
