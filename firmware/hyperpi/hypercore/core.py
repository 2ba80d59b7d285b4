"""`Core`: one Hypercore 11 log in a Store, as a writer (holding the secret key) or a reader.

Sans-IO: no sockets and no asyncio. A writer appends and signs; any core answers proof
requests with `proof()` and takes verified data with `verify_and_apply()`. The wire layer
moves the bytes. Subscribers hear "append", "upgrade" and "block" events after the data
is committed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Container, Iterable, Iterator, Sequence

from . import flat_tree
from .errors import (
    CorruptStore,
    HypercoreError,
    NotWritable,
    ProofUnavailable,
    StorageError,
    VerificationError,
)
from .keys import (
    KEY_BYTES,
    KeyPair,
    Manifest,
    core_key,
    decode_manifest,
    default_manifest,
    discovery_key,
    encode_manifest,
    generate_keypair,
    manifest_hash,
)
from .merkle import append_leaves, is_compat, leaf_hash, parent_node, sign_tree, tree_hash, verify_tree
from .proofs import Verified, generate_proof, verify_proof
from .storage import Store, damage_is_corruption
from .types import CoreEvent, Proof, ProofRequest, TreeNode

__all__ = [
    "Core",
    "CoreEvent",
    "CorruptStore",
    "HypercoreError",
    "NotWritable",
    "ProofUnavailable",
    "StorageError",
    "Store",
    "VerificationError",
]

log = logging.getLogger(__name__)

# Node's append() refuses blocks over 15 MiB (MAX_SUGGESTED_BLOCK_SIZE); one block must fit
# one secret-stream message (< 16 MiB) on the wire.
MAX_BLOCK_BYTES = 15 * 1024 * 1024
# Tree nodes kept in memory per core. A download checks each proof against nodes the previous
# proofs just stored, and every proof passes the same few upper nodes: a small cache answers
# nearly all of those lookups without SQLite. 2,048 nodes are about 400 KB.
NODE_CACHE_MAX = 2048
# Blocks read per SQLite query when serving them in order. Our readers download in order, so
# once two requests in a row were for neighbours, the rows after them are the next ones asked
# for: one query serves a whole batch of requests, with their leaf nodes and the tree nodes
# between them. (Node readers ask in random order: they get one row per query.) Bounded in
# bytes too, so large blocks are not held for requests that may never come.
READ_AHEAD_BLOCKS = 64
READ_AHEAD_BYTES = 256 * 1024


class Core:
    """A single-writer append-only log. Create with `Core.create` or `Core.open`."""

    def __init__(self, store: Store, row_id: int, key: bytes) -> None:
        self.store = store
        self._id = row_id
        self.key = key
        self.discovery_key = discovery_key(key)
        self._secret_key: bytes | None = None
        self._subscribers: list[Callable[[CoreEvent], None]] = []
        self._nodes: dict[int, TreeNode] = {}  # cache of stored nodes, see NODE_CACHE_MAX
        self._held_above: set[int] = set()  # held blocks at or past contiguous_length
        # Rows read ahead by get(): block index -> (value, leaf hash) as stored, unchecked.
        self._ahead: dict[int, tuple[object, object]] = {}
        self._last_get = -2  # the block get() returned last
        # Node indexes (first, last) whose stored nodes are all in _nodes: a lookup there that
        # misses needs no query. Set by _scan_nodes; any change that could break it resets it.
        self._scanned = (0, -1)
        self.reload()

    # --- opening ---------------------------------------------------------------------

    @classmethod
    def create(cls, store: Store, keypair: KeyPair | None = None, *, compat: bool = False) -> Core:
        """A writable core: generates a key pair if none is given and saves its secret key
        (0600). Creating again with the same key pair opens the existing core."""
        keypair = keypair or generate_keypair()
        if len(keypair.secret_key) != 64 or generate_keypair(keypair.secret_key[:32]) != keypair:
            raise ValueError("the key pair's secret key does not match its public key")
        key = core_key(keypair.public_key, compat)
        manifest = encode_manifest(default_manifest(keypair.public_key))
        existing = store.read_secret_key(key)
        if existing is not None and existing != keypair.secret_key:
            raise CorruptStore(f"the store already holds a different secret key for core {key.hex()}")
        if existing is None:
            store.write_secret_key(key, keypair.secret_key)
        # Node stores the default manifest for compat writers too; isCompat() tells them apart.
        return cls._get(store, key, manifest)

    @classmethod
    def open(cls, store: Store, key: bytes) -> Core:
        """The core with this key: writable if the store holds its secret key, else a reader
        (an empty record is created for a key not seen before)."""
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"a core key must be {KEY_BYTES} bytes")
        return cls._get(store, bytes(key), None)

    @classmethod
    def _get(cls, store: Store, key: bytes, manifest: bytes | None) -> Core:
        core = store.cached_core(key)
        if core is None:
            core = cls(store, store.core_row(key, manifest), key)
            store.cache_core(core)
        core._load_secret()
        return core

    def _load_secret(self) -> None:
        secret = self.store.read_secret_key(self.key)
        if secret is None:
            return
        public_key = secret[32:]
        if generate_keypair(secret[:32]).public_key != public_key:
            # Signing with a damaged key would store signatures nobody can verify.
            raise CorruptStore(f"secret key file {self.store.secret_key_path(self.key)} is damaged")
        if self.key not in (public_key, core_key(public_key)):
            raise CorruptStore(f"secret key file {self.store.secret_key_path(self.key)} belongs to another core")
        if self._manifest is not None and self._manifest.signers[0].public_key != public_key:
            raise CorruptStore(f"the secret key does not match the manifest of core {self.key.hex()}")
        if self.manifest is None:
            # A writer always knows its manifest (compat writers keep it too, as Node does).
            encoded = encode_manifest(default_manifest(public_key))
            with self.store.transaction():
                self.store.write_manifest(self._id, encoded)
            self._set_manifest(encoded)
        self._secret_key = secret

    def reload(self) -> None:
        """Read the head from the store again and check its signature (the store calls it when
        a transaction that changed this core was rolled back)."""
        with damage_is_corruption(f"the head of core {self.key.hex()}"):
            row = self.store.read_head(self._id)
            if row is None:
                raise CorruptStore(f"core {self.key.hex()} vanished from the store")
            manifest, self.length, self.fork, self.byte_length, self.signature = row
            self._set_manifest(manifest)
            self._nodes.clear()
            self._ahead.clear()
            self._scanned = (0, -1)
            self._contiguous, self._held_above = self.store.held_blocks(self._id, self.length)
            self._roots = self._load_roots(self.length)
            if self.byte_length != sum(r.size for r in self._roots):
                raise CorruptStore(f"the byte length of core {self.key.hex()} is damaged in the store")
            if self.length and (
                self.signature is None
                or not verify_tree(
                    self.key, self._manifest, tree_hash(self._roots), self.length, self.fork, self.signature
                )
            ):
                raise CorruptStore(f"the stored signature of core {self.key.hex()} does not verify")

    def _set_manifest(self, encoded: bytes | None) -> None:
        if encoded is not None and manifest_hash(encoded) != self.key and not _compat_manifest(self.key, encoded):
            raise CorruptStore(f"the stored manifest does not belong to core {self.key.hex()}")
        self.manifest: bytes | None = encoded
        self._manifest: Manifest | None = decode_manifest(encoded) if encoded is not None else None

    def _load_roots(self, length: int) -> list[TreeNode]:
        roots = []
        for index in flat_tree.full_roots(2 * length):
            node = self._node(index)
            if node is None:
                raise CorruptStore(f"core {self.key.hex()} lacks root node {index} of its length {length}")
            roots.append(node)
        return roots

    # --- properties --------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self._secret_key is not None

    @property
    def compat(self) -> bool:
        """True for compat cores (key = public key), and for readers holding no manifest yet
        (Node assumes compat then)."""
        return self._manifest is None or is_compat(self.key, self._manifest)

    @property
    def has_manifest(self) -> bool:
        return self._manifest is not None and not self.compat

    @property
    def public_key(self) -> bytes | None:
        if self._manifest is not None and self._manifest.signers:
            return self._manifest.signers[0].public_key
        return None

    @property
    def contiguous_length(self) -> int:
        """Blocks 0..n-1 are all held here."""
        return self._contiguous

    @property
    def roots(self) -> list[TreeNode]:
        return list(self._roots)

    def tree_hash(self) -> bytes:
        return tree_hash(self._roots)

    # --- reading -----------------------------------------------------------------------

    def get(self, i: int) -> bytes:
        """Block i; KeyError if not held here, CorruptStore if the stored bytes are damaged."""
        row = self._ahead.pop(i, None)
        if row is None and i == self._last_get + 1:
            row = self._read_ahead(i)
        elif row is None:
            with damage_is_corruption(f"block {i} of core {self.key.hex()}"):
                row = self.store.read_block(self._id, i)
        self._last_get = i
        if row is None:
            raise KeyError(f"block {i} of core {self.key.hex()[:16]}... is not held here")
        value, expected = row
        if not isinstance(value, bytes) or leaf_hash(value) != expected:
            self._drop_block(i, expected)
            raise CorruptStore(
                f"block {i} of core {self.key.hex()} was damaged in the store: dropped, to be fetched again from peers"
            )
        return value

    def _read_ahead(self, i: int) -> tuple | None:
        """Block i's stored row, and the rows after it into `_ahead` (READ_AHEAD_BLOCKS)."""
        where = f"block {i} of core {self.key.hex()}"
        try:
            with damage_is_corruption(where):
                rows = self.store.read_blocks(self._id, i, READ_AHEAD_BLOCKS, READ_AHEAD_BYTES)
        except CorruptStore:  # a damaged neighbour must not fail this block: read it alone
            rows = []
        if not rows or rows[0][0] != i:
            with damage_is_corruption(where):
                return self.store.read_block(self._id, i)
        self._ahead = {index: (value, digest) for index, value, digest in rows[1:]}
        self._scan_nodes(2 * i, 2 * rows[-1][0])  # the nodes their proofs take
        return rows[0][1], rows[0][2]

    def _scan_nodes(self, first: int, last: int) -> None:
        """Read the stored nodes first..last into the cache with one query (a download asks
        for neighbouring nodes in a row), and remember that none else lies there."""
        with damage_is_corruption(f"the tree nodes of core {self.key.hex()}"):
            rows = self.store.read_nodes(self._id, first, last)
        nodes = []
        for index, size, digest in rows:
            if not isinstance(size, int) or size < 0 or not isinstance(digest, bytes) or len(digest) != 32:
                raise CorruptStore(f"tree node {index} of core {self.key.hex()} is damaged in the store")
            nodes.append(TreeNode(index, size, digest))
        self._cache_nodes(nodes)
        self._scanned = (first, last)

    def _drop_block(self, i: int, digest: object) -> None:
        """Forget a damaged block (its row holds its leaf hash too, which may be the damaged
        part): it is no longer held, so replication asks peers for it again, checked against
        the tree nodes above it."""
        log.warning("block %d of core %s is damaged in the store: dropped, to be fetched again", i, self.key.hex()[:16])
        self._keep_leaf(i, digest)
        self.store.delete_block(self._id, i)
        self.store.touched(self)  # a rolled-back transaction brings the row back: reload then
        self._nodes.pop(2 * i, None)
        self._ahead.pop(i, None)
        self._scanned = (0, -1)  # the leaf may still be in the nodes table
        if i < self._contiguous:
            self._held_above.update(range(i + 1, self._contiguous))
            self._contiguous = i
        self._held_above.discard(i)

    def _keep_leaf(self, i: int, digest: object) -> None:
        """Keep the leaf node of damaged block i as a tree node when its parent proves the hash
        in its row: a held block's leaf lives in its row only, and proofs of its neighbour need
        it until the block is fetched again."""
        leaf, sibling, parent = 2 * i, 2 * i ^ 2, (2 * i | 1) & ~2
        for root in self._roots:
            if root.index == leaf:  # the last block of an odd length: its leaf is a root
                self.store.write_node(self._id, root)
                return
        if not isinstance(digest, bytes) or len(digest) != 32 or flat_tree.right_span(parent) >= 2 * self.length:
            return
        try:
            up, side = self._node(parent), self._node(sibling)
        except CorruptStore:
            return
        if up is None or side is None or up.size < side.size:
            return
        node = TreeNode(leaf, up.size - side.size, digest)
        if parent_node(parent, *((node, side) if leaf < sibling else (side, node))) == up:
            self.store.write_node(self._id, node)

    def has(self, i: int) -> bool:
        return i < self._contiguous or i in self._held_above

    def _node(self, index: int) -> TreeNode | None:
        node = self._nodes.get(index)
        if node is not None:
            return node
        ahead = self._ahead.get(index >> 1) if not index & 1 else None
        if ahead is not None and isinstance(ahead[0], bytes):  # a held block's leaf, read ahead
            row: tuple | None = (len(ahead[0]), ahead[1])
        elif self._scanned[0] <= index <= self._scanned[1]:
            row = None  # not in the nodes table (see _scan_nodes)
        elif not index & 1 and self.has(index >> 1):
            row = self.store.read_node_or_leaf(self._id, index >> 1)  # a held block's leaf: in its row
        else:
            row = self.store.read_node(self._id, index)
        if row is None and not index & 1 and self.has(index // 2):  # a held block's leaf is in its row
            row = self.store.read_leaf(self._id, index // 2)
        if row is None:
            return None
        size, digest = row
        if not isinstance(size, int) or size < 0 or not isinstance(digest, bytes) or len(digest) != 32:
            raise CorruptStore(f"tree node {index} of core {self.key.hex()} is damaged in the store")
        node = TreeNode(index, size, digest)
        self._cache_nodes((node,))
        return node

    def _cache_nodes(self, nodes: Iterable[TreeNode]) -> None:
        if len(self._nodes) > NODE_CACHE_MAX:
            self._nodes.clear()  # cheaper than LRU bookkeeping, and refills in a few proofs
            self._scanned = (0, -1)
        for node in nodes:
            self._nodes[node.index] = node

    def _block(self, i: int) -> bytes | None:
        try:
            return self.get(i)
        except (KeyError, CorruptStore):  # a damaged block is dropped by get(): not held any more
            return None

    def missing_nodes(self, block_index: int, also_held: Container[int] = ()) -> int:
        """The `nodes` count to put in a request for this block (Node's missingNodes):
        levels from the leaf up to the nearest node we hold. `also_held`: nodes that proofs
        already in flight will deliver, so pipelined requests ask for short paths."""
        head = 2 * self.length
        index = 2 * block_index
        if flat_tree.right_span(index) >= head:
            return 0
        if not self._scanned[0] <= index <= self._scanned[1]:
            self._scan_nodes(index, index + 2 * READ_AHEAD_BLOCKS)  # the next requests look there
        count = 0
        while not flat_tree.contains(index, head) and index not in also_held and self._node(index) is None:
            count += 1
            index = flat_tree.parent(index)
        return count

    def has_node(self, index: int) -> bool:
        """Do we hold (trust) tree node `index`?"""
        return self._node(index) is not None

    # --- writing -----------------------------------------------------------------------

    def append(self, blocks: Sequence[bytes]) -> int:
        """Append blocks, sign the new head, commit in one transaction; returns the new length."""
        if self._secret_key is None:
            raise NotWritable(f"core {self.key.hex()[:16]}... is read-only here (no secret key)")
        for block in blocks:
            if not isinstance(block, (bytes, bytearray, memoryview)):
                raise TypeError(f"blocks must be bytes, got {type(block).__name__}")
            if len(block) > MAX_BLOCK_BYTES:
                raise ValueError(f"a block of {len(block)} bytes is over the {MAX_BLOCK_BYTES} byte limit")
        if not blocks:
            return self.length
        blocks = [bytes(b) for b in blocks]
        start = self.length
        roots, new_nodes = append_leaves(self._roots, start, blocks)
        length = start + len(blocks)
        byte_length = self.byte_length + sum(map(len, blocks))
        signature = sign_tree(self._secret_key, self.key, self.compat, tree_hash(roots), length, self.fork)
        cid = self._id
        with self.transaction():
            store = self.store
            store.touched(self)
            leaves = [n for n in new_nodes if not n.index & 1]
            store.insert_blocks(
                cid, [(start + i, b, leaf.hash) for i, (b, leaf) in enumerate(zip(blocks, leaves, strict=True))]
            )
            store.insert_nodes(cid, [n for n in new_nodes if n.index & 1])
            self._scanned = (0, -1)  # new nodes that are not cached
            store.write_head(cid, length, byte_length, signature)
            self.length, self.byte_length, self.signature, self._roots = length, byte_length, signature, roots
            self._held_above.update(range(start, length))
            self._advance_contiguous()
            self._cache_nodes(roots)
            self._emit(CoreEvent("append", length, None))
        return length

    @contextlib.contextmanager
    def transaction(self, savepoint: bool = True) -> Iterator[None]:
        """Many appends / verify_and_apply calls in one SQLite transaction."""
        with self.store.transaction(savepoint):
            yield

    # --- replication -------------------------------------------------------------------

    def proof(self, req: ProofRequest) -> Proof:
        """The proof answering a peer's request; ProofUnavailable(reason) if we cannot."""
        return generate_proof(
            req,
            length=self.length,
            fork=self.fork,
            signature=self.signature or b"",
            get_node=self._node,
            get_block=self._block,
            manifest=self.manifest if req.manifest and self.has_manifest else None,
        )

    def verify_and_apply(self, proof: Proof) -> list[CoreEvent]:
        """Check a proof; store its manifest, nodes, block and upgrade. Raises
        VerificationError and stores nothing if it does not check out."""
        v = verify_proof(
            proof,
            key=self.key,
            manifest=self._manifest,
            length=self.length,
            fork=self.fork,
            get_node=self._node,
        )
        # Verified already, so only the storage can fail below. Inside a caller's transaction
        # (a replicator applying a burst) there is no savepoint, and no context manager to pay
        # for per proof: a storage failure undoes the caller's whole transaction, and the
        # cores' heads are reloaded from the database.
        if self.store.in_transaction:
            return self._apply(v)
        with self.transaction():
            return self._apply(v)

    def _apply(self, v: Verified) -> list[CoreEvent]:
        events: list[CoreEvent] = []
        cid = self._id
        store = self.store
        store.touched(self)
        if v.manifest is not None and self.manifest is None:
            store.write_manifest(cid, v.manifest)
            self._set_manifest(v.manifest)
        if v.nodes:
            # Not stored again: the node the proof was checked against, and the block's leaf
            # (its row holds it; _keep_leaf saves it if the block is ever dropped). An in-order
            # download so stores ~1.5 node rows per block: the parents, and the sibling leaves
            # that arrive before their own blocks.
            leaf_index = 2 * v.block[0] if v.block is not None else -1
            new = [n for n in v.nodes if n.index != v.trusted and n.index != leaf_index]
            if new:
                store.defer_nodes(cid, new)
            self._cache_nodes(v.nodes)
        if v.upgraded and (v.length > self.length or (self.length == 0 and v.fork != self.fork)):
            byte_length = sum(r.size for r in v.roots)
            store.write_head(cid, v.length, byte_length, v.signature, v.fork)
            self.length, self.fork, self.byte_length = v.length, v.fork, byte_length
            self.signature, self._roots = v.signature, v.roots
            events.append(CoreEvent("upgrade", v.length, None))
        if v.block is not None and not self.has(v.block[0]):
            index, value = v.block
            leaf = v.nodes[0]  # the proof's leaf, hashed while verifying
            digest = leaf.hash if leaf.index == 2 * index else leaf_hash(value)
            store.defer_block(cid, index, value, digest)
            self._held_above.add(index)
            self._advance_contiguous()
            events.append(CoreEvent("block", self.length, index))
        for event in events:
            self._emit(event)
        return events

    def _advance_contiguous(self) -> None:
        n = self._contiguous
        while n in self._held_above:
            self._held_above.discard(n)
            n += 1
        self._contiguous = n

    # --- events ------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[CoreEvent], None]) -> Callable[[], None]:
        """Call `callback(event)` after each committed change; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, event: CoreEvent) -> None:
        self.store.after_commit_each(self._deliver, event)

    def _deliver(self, events: list[CoreEvent]) -> None:
        """Tell the subscribers about a committed transaction's events, in order."""
        for event in events:
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:  # the data is committed: a broken listener must not undo the call
                    log.exception("a subscriber of core %s failed on %s", self.key.hex()[:16], event.kind)

    # --- checking ----------------------------------------------------------------------

    def audit(self) -> None:
        """Re-verify everything stored: every block against its leaf, every parent node
        against its children, the roots against the signature. Raises CorruptStore."""
        where = f"core {self.key.hex()[:16]}..."
        with damage_is_corruption(where):
            nodes = {i: TreeNode(i, s, h) for i, s, h in self.store.all_nodes(self._id)}
            for i, value, expected in self.store.all_blocks(self._id):
                if i >= self.length:
                    raise CorruptStore(f"{where}: block {i} lies beyond the length {self.length}")
                leaf = TreeNode(2 * i, len(value), leaf_hash(value))
                if leaf.hash != expected or nodes.setdefault(2 * i, leaf) != leaf:
                    raise CorruptStore(f"{where}: block {i} does not match its tree node")
            for index, node in nodes.items():
                kids = flat_tree.children(index)
                if kids and kids[0] in nodes and kids[1] in nodes:
                    if parent_node(index, nodes[kids[0]], nodes[kids[1]]) != node:
                        raise CorruptStore(f"{where}: tree node {index} does not match its children")
            wanted = flat_tree.full_roots(2 * self.length)
            roots = [nodes[r] for r in wanted if r in nodes]
            if len(roots) < len(wanted):
                raise CorruptStore(f"{where}: a root of length {self.length} is missing")
            if self.length and not verify_tree(
                self.key, self._manifest, tree_hash(roots), self.length, self.fork, self.signature or b""
            ):
                raise CorruptStore(f"{where}: the signature does not verify")

    def __repr__(self) -> str:
        mode = "writer" if self.writable else "reader"
        return f"<Core {self.key.hex()[:16]}... {mode} length={self.length} fork={self.fork}>"


def _compat_manifest(key: bytes, encoded: bytes) -> bool:
    try:
        return is_compat(key, decode_manifest(encoded))
    except ValueError:
        return False
