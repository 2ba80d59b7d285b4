"""One SQLite file holding many cores, plus a `keys/` folder of secret key files.

Layout of a store directory:
    cores.db      SQLite in WAL mode: tables `cores` (head of each core: length, fork,
                  signature, manifest), `nodes` (Merkle tree nodes) and `blocks` (values
                  with their leaf hash: the leaf node of a held block lives in its block
                  row, which saves a row per block on the append path)
    keys/         0700; one 0600 file `<hex core key>.secret` per writable core (64 bytes,
                  libsodium's seed || public key). Secret keys never enter the database.

Crash safety: every append or applied proof is one SQLite transaction, so a reopened store
shows the old or the new head, never a mix. We run WAL with synchronous=FULL: each commit
fsyncs the WAL before it returns, so an append that returned survives a power cut too.
(NORMAL would skip that fsync; a power cut could then drop the last commits, and a writer
that lost its tail and appended again would fork its own feed. The cost is measured in
README "Benchmarks".) A damaged database is set aside whole (`set_aside`); a damaged block
is dropped by `Core.get` and fetched again from peers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CorruptStore, DiskFull, StorageError
from .secret_files import fsync_dir, read_secret, write_atomic
from .types import TreeNode

if TYPE_CHECKING:
    from .core import Core

DB_NAME = "cores.db"
KEYS_DIR = "keys"
FORMAT = "hyperpi-store-1"
SECRET_KEY_BYTES = 64
DIR_MODE = 0o700  # the store and its keys/ folder
FILE_MODE = 0o600  # cores.db (and so its -wal and -shm files) and the secret key files
WAL_CHECKPOINT_PAGES = 8192  # x 4 KiB pages = 32 MiB of WAL between automatic checkpoints

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cores (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    manifest BLOB,
    length INTEGER NOT NULL DEFAULT 0,
    fork INTEGER NOT NULL DEFAULT 0,
    byte_length INTEGER NOT NULL DEFAULT 0,
    signature BLOB
);
CREATE TABLE IF NOT EXISTS nodes (
    core INTEGER NOT NULL, idx INTEGER NOT NULL, size INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (core, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    core INTEGER NOT NULL, idx INTEGER NOT NULL, value BLOB NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (core, idx)
) WITHOUT ROWID;
"""


class Store:
    """A directory holding the SQLite file of many cores and their secret key files.

    Use as a context manager or call close(). One Core object exists per key per store, so
    every user of a core sees the same head and the same subscribers.

    The store owns all SQL: a `Core` reads and writes its rows through the named methods below
    ("the rows of a core"), addressed by the row id `core_row` gives it, and those raise
    StorageError (CorruptStore, DiskFull), never sqlite3's errors.
    """

    def __init__(self, path: str | Path, *, cache_kib: int | None = None) -> None:
        """`cache_kib`: SQLite's page cache in KiB (None: SQLite's default, about 2 MiB)."""
        self.path = Path(path)
        self._cache_kib = cache_kib
        self.db_path = self.path / DB_NAME
        try:
            # Modes are set, not left to the umask (000 would make all of it world-writable).
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir(mode=DIR_MODE, exist_ok=True)
            self.keys_dir.mkdir(mode=DIR_MODE, exist_ok=True)
            _tighten(self.keys_dir, DIR_MODE)  # a key folder others can list leaks key names
        except OSError as error:
            raise _os_error(self.path, error) from None
        self._cores: dict[bytes, Core] = {}
        self._depth = 0  # nesting of transaction()
        self._deferred: dict[str, list[tuple]] = {}  # see _defer()
        self._touched: list[Core] = []  # cores changed in the open transaction
        self._after_commit: list[Callable[[], None]] = []
        self._after_commit_items: dict[Callable[[list], None], list] = {}  # see after_commit_each
        try:
            self.db = sqlite3.connect(self.db_path, isolation_level=None)
            # SQLite creates the database 0644 less the umask, and its -wal and -shm files with
            # the database's mode: tightened before _setup opens the WAL, all three are 0600.
            for suffix in ("", "-wal", "-shm"):
                _tighten(self.path / (DB_NAME + suffix), FILE_MODE)
            self._setup()
        except (sqlite3.DatabaseError, ValueError) as error:  # ValueError: undecodable schema text
            with contextlib.suppress(Exception):
                self.db.close()
            if isinstance(error, sqlite3.DatabaseError) and not _is_damage(error):
                raise _storage_error(error) from None  # a full disk or a busy store is not damage
            reason = error if isinstance(error, sqlite3.DatabaseError) else "unreadable schema"
            raise CorruptStore(f"{self.db_path} is damaged or not a hyperpi store ({reason})") from None
        except OSError as error:
            self.db.close()
            raise _os_error(self.path, error) from None

    @property
    def keys_dir(self) -> Path:
        return self.path / KEYS_DIR

    def _setup(self) -> None:
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # see the module docstring
        if self._cache_kib is not None:
            db.execute(f"PRAGMA cache_size=-{int(self._cache_kib)}")
        # Each checkpoint copies the WAL into the database and fsyncs it; SQLite's default
        # (1000 pages = 4 MiB) checkpoints several times per 100,000 chat messages. 32 MiB
        # lets a burst of appends run without them, at the cost of a WAL file up to that size.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        # quick_check reads every page once: cheap at chat-log sizes, and it turns a damaged
        # or truncated file into one clear error at open instead of odd failures later.
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {result}")
        db.executescript(SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE name='format'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
        elif row[0] != FORMAT:
            raise sqlite3.DatabaseError(f"unknown store format {row[0]!r}")

    def clear_core(self, key: bytes) -> None:
        """Forget everything stored of core `key` but its record (a damaged core, to fetch again
        from peers); its secret key file stays. Open it again with Core.open or Core.create."""
        if self._depth:
            raise StorageError("cannot clear a core inside a transaction")
        self._cores.pop(key, None)
        try:
            with self.transaction():
                row = self.db.execute("SELECT id FROM cores WHERE key=?", (key,)).fetchone()
                if row is not None:
                    self.db.execute("DELETE FROM blocks WHERE core=?", row)
                    self.db.execute("DELETE FROM nodes WHERE core=?", row)
                    self.db.execute(
                        "UPDATE cores SET manifest=NULL, length=0, fork=0, byte_length=0, signature=NULL WHERE id=?",
                        row,
                    )
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None

    # --- the rows of a core (what Core reads and writes) ---------------------------------

    def cached_core(self, key: bytes) -> Core | None:
        """The Core object already opened on `key` in this store, if any."""
        return self._cores.get(key)

    def cache_core(self, core: Core) -> None:
        self._cores[core.key] = core

    def core_row(self, key: bytes, manifest: bytes | None) -> int:
        """The row id of core `key`, creating its record if new; a manifest given is stored
        unless the record holds one already."""
        try:
            with self.transaction():
                self.db.execute("INSERT OR IGNORE INTO cores (key, manifest) VALUES (?, ?)", (key, manifest))
                if manifest is not None:
                    self.db.execute("UPDATE cores SET manifest=? WHERE key=? AND manifest IS NULL", (manifest, key))
                (row_id,) = self.db.execute("SELECT id FROM cores WHERE key=?", (key,)).fetchone()
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None
        return row_id

    def read_head(self, core: int) -> tuple | None:
        """(manifest, length, fork, byte_length, signature) as stored, unchecked; None: no record."""
        return self._row("SELECT manifest, length, fork, byte_length, signature FROM cores WHERE id=?", (core,))

    def write_head(
        self, core: int, length: int, byte_length: int, signature: bytes | None, fork: int | None = None
    ) -> None:
        """A new head (an append keeps the fork: None)."""
        if fork is None:
            self._write(
                "UPDATE cores SET length=?, byte_length=?, signature=? WHERE id=?",
                (length, byte_length, signature, core),
            )
        else:
            self._write(
                "UPDATE cores SET length=?, fork=?, byte_length=?, signature=? WHERE id=?",
                (length, fork, byte_length, signature, core),
            )

    def write_manifest(self, core: int, manifest: bytes) -> None:
        self._write("UPDATE cores SET manifest=? WHERE id=?", (manifest, core))

    def held_blocks(self, core: int, length: int) -> tuple[int, set[int]]:
        """(n, others): blocks 0..n-1 are held (n at most `length`), and `others` are the held
        blocks past n."""
        try:
            (contiguous,) = self.db.execute(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM blocks WHERE core=?1 AND idx=0) THEN"
                " (SELECT MIN(idx) + 1 FROM blocks b WHERE core=?1 AND NOT EXISTS"
                "  (SELECT 1 FROM blocks WHERE core=?1 AND idx=b.idx+1)) ELSE 0 END",
                (core,),
            ).fetchone()
            contiguous = min(contiguous, length)
            above = {i for (i,) in self.db.execute("SELECT idx FROM blocks WHERE core=? AND idx>?", (core, contiguous))}
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None
        return contiguous, above

    def read_block(self, core: int, index: int) -> tuple | None:
        """(value, leaf hash) of a held block, unchecked; None if not held."""
        return self._row("SELECT value, hash FROM blocks WHERE core=? AND idx=?", (core, index))

    def read_blocks(self, core: int, start: int, count: int, max_bytes: int) -> list[tuple]:
        """(index, value, leaf hash) of the held blocks in [start, start + count), in order,
        unchecked; stops after the row that takes the values past `max_bytes`."""
        rows: list[tuple] = []
        size = 0
        try:
            self.flush_writes()
            cursor = self.db.execute(
                "SELECT idx, value, hash FROM blocks WHERE core=? AND idx>=? AND idx<? ORDER BY idx",
                (core, start, start + count),
            )
            for row in cursor:  # rows are read one by one: past the byte limit, no more are
                rows.append(row)
                size += len(row[1]) if isinstance(row[1], bytes) else 0
                if size >= max_bytes:
                    break
            cursor.close()
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None
        return rows

    def read_node(self, core: int, index: int) -> tuple | None:
        """(size, hash) of a stored parent node (or a leaf of a block not held), unchecked."""
        return self._row("SELECT size, hash FROM nodes WHERE core=? AND idx=?", (core, index))

    def read_nodes(self, core: int, first: int, last: int) -> list[tuple]:
        """(index, size, hash) of the stored nodes with first <= index <= last, unchecked."""
        return list(
            self._rows("SELECT idx, size, hash FROM nodes WHERE core=? AND idx>=? AND idx<=?", (core, first, last))
        )

    def read_node_or_leaf(self, core: int, block: int) -> tuple | None:
        """read_node of block's leaf, else read_leaf: one query for what is mostly two."""
        return self._row(
            "SELECT size, hash FROM nodes WHERE core=?1 AND idx=?2 * 2"
            " UNION ALL SELECT length(value), hash FROM blocks WHERE core=?1 AND idx=?2 LIMIT 1",
            (core, block),
        )

    def read_leaf(self, core: int, block: int) -> tuple | None:
        """(size, hash) of a held block's leaf node, which lives in the block's row."""
        return self._row("SELECT length(value), hash FROM blocks WHERE core=? AND idx=?", (core, block))

    def insert_blocks(self, core: int, blocks: Iterable[tuple[int, bytes, bytes]]) -> None:
        """Store (index, value, leaf hash) rows now."""
        try:
            self.db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", [(core, *b) for b in blocks])
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None

    def insert_nodes(self, core: int, nodes: Iterable[TreeNode]) -> None:
        try:
            self.db.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?)", [(core, *n) for n in nodes])
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None

    def write_node(self, core: int, node: TreeNode) -> None:
        """Store one verified node now (replacing any held)."""
        self._write("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?)", (core, *node))

    def defer_nodes(self, core: int, nodes: Iterable[TreeNode]) -> None:
        """Store verified nodes (replacing any held) with the next batch of writes (`_defer`)."""
        self._defer("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?)", [(core, *n) for n in nodes])

    def defer_block(self, core: int, index: int, value: bytes, leaf_hash: bytes) -> None:
        self._defer("INSERT INTO blocks VALUES (?, ?, ?, ?)", ((core, index, value, leaf_hash),))

    def delete_block(self, core: int, index: int) -> None:
        self._write("DELETE FROM blocks WHERE core=? AND idx=?", (core, index))

    def all_nodes(self, core: int) -> Iterator[tuple]:
        """Every stored (index, size, hash) parent node of a core, unchecked."""
        return self._rows("SELECT idx, size, hash FROM nodes WHERE core=?", (core,))

    def all_blocks(self, core: int) -> Iterator[tuple]:
        """Every held (index, value, leaf hash) block of a core, unchecked."""
        return self._rows("SELECT idx, value, hash FROM blocks WHERE core=?", (core,))

    def _rows(self, sql: str, args: tuple) -> Iterator[tuple]:
        """The rows of a query, read after the deferred writes."""
        try:
            self.flush_writes()
            yield from self.db.execute(sql, args)
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None

    def _row(self, sql: str, args: tuple) -> tuple | None:
        """One row of a query, read after the deferred writes."""
        try:
            self.flush_writes()
            return self.db.execute(sql, args).fetchone()
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None

    def _write(self, sql: str, args: tuple) -> None:
        try:
            self.db.execute(sql, args)
        except sqlite3.DatabaseError as error:
            raise _storage_error(error) from None

    def close(self) -> None:
        if self._depth:
            raise StorageError("cannot close a store inside a transaction")
        self._cores.clear()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions ------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, savepoint: bool = True, *, write: bool = True) -> Iterator[None]:
        """Group writes: the outermost block is one SQLite transaction; inner blocks are
        savepoints, so a failed inner step undoes only itself. Subscribers are called after
        the outermost commit. `savepoint=False` joins an outer transaction as it is (no
        savepoint to pay for): a failure inside must then undo the whole outer one.
        `write=False` is for a batch of reads (answering peers' requests): the outermost
        level takes no write lock until something in it writes, and its queries share one
        read lock instead of taking one each, which is half the cost of a point query."""
        if not savepoint and self._depth:
            yield
            return
        outer = self._depth == 0
        self._depth += 1
        try:
            self.flush_writes()  # rows deferred so far belong to the enclosing level
            self.db.execute(("BEGIN IMMEDIATE" if write else "BEGIN") if outer else f"SAVEPOINT s{self._depth}")
        except sqlite3.DatabaseError as error:
            self._depth -= 1
            raise _storage_error(error) from None
        try:
            yield
        except BaseException:
            self._rollback(outer)
            raise
        else:
            try:
                self.flush_writes()
                self.db.execute("COMMIT" if outer else f"RELEASE s{self._depth}")
            except sqlite3.DatabaseError as error:
                self._rollback(outer)
                raise _storage_error(error) from None
        finally:
            self._depth -= 1
        if outer:
            self._touched.clear()
            callbacks, self._after_commit = self._after_commit, []
            self._after_commit_items = {}
            for callback in callbacks:
                callback()

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def _defer(self, sql: str, rows: Iterable[tuple]) -> None:
        """Queue rows for an INSERT until the next read, savepoint or commit (`flush_writes`):
        a download stores a few rows per proof, and one executemany per burst is much cheaper
        than two statements per proof. Only inside a transaction."""
        assert self._depth, "deferred writes need a transaction"
        self._deferred.setdefault(sql, []).extend(rows)

    def flush_writes(self) -> None:
        """Write the deferred rows (before anything reads the tables they go to)."""
        if self._deferred:
            pending, self._deferred = self._deferred, {}
            for sql, rows in pending.items():
                self.db.executemany(sql, rows)

    def _rollback(self, outer: bool) -> None:
        self._deferred.clear()  # rows deferred inside the level being undone
        with contextlib.suppress(sqlite3.DatabaseError):
            if outer:
                self.db.execute("ROLLBACK")
            else:
                self.db.execute(f"ROLLBACK TO s{self._depth}")
                self.db.execute(f"RELEASE s{self._depth}")
        # In-memory heads of the cores written in the undone part must follow the database.
        for core in self._touched:
            core.reload()
        if outer:
            self._touched.clear()
            self._after_commit.clear()
            self._after_commit_items.clear()

    def touched(self, core: Core) -> None:
        if core not in self._touched:
            self._touched.append(core)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run callback once the current outermost transaction has committed."""
        self._after_commit.append(callback)

    def after_commit_each(self, callback: Callable[[list], None], item: object) -> None:
        """Queue `item` for `callback`: once the outermost transaction has committed, it is
        called once with every item queued for it, in order (a download applying hundreds of
        proofs in one transaction makes one call, not one per proof)."""
        items = self._after_commit_items.get(callback)
        if items is None:
            items = self._after_commit_items[callback] = []
            self._after_commit.append(lambda: callback(items))
        items.append(item)

    # --- secret key files ----------------------------------------------------------------

    def secret_key_path(self, key: bytes) -> Path:
        return self.keys_dir / f"{key.hex()}.secret"

    def write_secret_key(self, key: bytes, secret_key: bytes) -> None:
        """Write the 0600 key file atomically (temp file, fsync, rename, fsync of the folder)."""
        write_atomic(self.secret_key_path(key), secret_key)

    def delete_secret_key(self, key: bytes) -> None:
        """Remove a core's secret key file (the core stays, read-only); no file is no error."""
        self.secret_key_path(key).unlink(missing_ok=True)
        fsync_dir(self.keys_dir)  # gone for good, even after a power cut

    def read_secret_key(self, key: bytes) -> bytes | None:
        """The secret key for a core key, None if this store has none; SecretFileError (a
        StorageError) if others may read the file."""
        path = self.secret_key_path(key)
        try:
            data = read_secret(path)
        except FileNotFoundError:
            return None
        if len(data) != SECRET_KEY_BYTES:
            raise CorruptStore(f"secret key file {path} is damaged ({len(data)} bytes, expected 64)")
        return data


def _tighten(path: Path, mode: int) -> None:
    """Give `path`, if it exists, `mode` when group or others have any access to it."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, mode)


@contextlib.contextmanager
def damage_is_corruption(what: str) -> Iterator[None]:
    """Turn what a damaged database can throw while we read it into one CorruptStore."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        raise _storage_error(error) from None
    except (ValueError, OverflowError, TypeError, KeyError) as error:
        raise CorruptStore(f"{what} is damaged in the store ({type(error).__name__})") from None


def set_aside(path: str | Path, now: datetime | None = None) -> Path:
    """Move a damaged store's database (and its -wal and -shm files) to
    `cores.db.damaged-<UTC time>` in the same folder, kept for a look later; a Store opened
    on `path` afterwards starts empty. Returns the new name of the database file."""
    folder = Path(path)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{DB_NAME}.damaged-{stamp}"
    for suffix in ("-wal", "-shm", ""):  # the database last: its name is the one reported
        source = folder / (DB_NAME + suffix)
        if source.exists():
            os.replace(source, folder / (target.name + suffix))
    fsync_dir(folder)  # the renames survive a power cut: no second repair of the same file
    return target


# SQLite's primary result codes (sqlite3.h) that say the file itself is bad.
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
SQLITE_FULL = 13


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by our own checks (quick_check, format), not by SQLite
        return not isinstance(error, sqlite3.OperationalError)
    return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def _os_error(path: Path, error: OSError) -> StorageError:
    if error.errno == errno.ENOSPC:
        return DiskFull(f"the disk is full: cannot use {path} as a store")
    return StorageError(f"cannot use {path} as a store: {error.strerror}")


def _storage_error(error: sqlite3.DatabaseError) -> StorageError:
    text = str(error)
    if getattr(error, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL or "disk is full" in text:
        return DiskFull(f"the disk is full: the store cannot be written ({text})")
    if "locked" in text or "busy" in text:
        return StorageError(f"the store is busy in another process ({text})")
    # I/O or permission trouble: the file may be fine, the machine is not.
    if isinstance(error, sqlite3.OperationalError) and any(
        word in text for word in ("full", "I/O", "readonly", "unable to open", "permission")
    ):
        return StorageError(f"the store cannot be written or read: {text}")
    return CorruptStore(f"the store database is damaged: {text}")
