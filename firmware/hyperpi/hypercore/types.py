"""Plain data shared by the Merkle tree, the proofs and the wire codecs.

These mirror the fields of Node hypercore 11's `request` and `data` messages
(`lib/messages.js` `wire.request` / `wire.data`), so the wire layer only moves bytes and
the core only reasons about trees. Indexes of tree nodes are flat-tree indexes; block
indexes are block numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class TreeNode(NamedTuple):
    """One Merkle tree node: flat-tree index, bytes of blocks below it, BLAKE2b-256 hash."""

    # `index` shadows tuple.index(): the flat-tree index is this node's name everywhere.
    index: int  # type: ignore[assignment]
    size: int
    hash: bytes


@dataclass(frozen=True)
class BlockRequest:
    index: int  # block number
    nodes: int  # how many levels of ancestors-plus-siblings the requester lacks


@dataclass(frozen=True)
class HashRequest:
    index: int  # tree node index
    nodes: int


@dataclass(frozen=True)
class SeekRequest:
    bytes: int
    padding: int


@dataclass(frozen=True)
class UpgradeRequest:
    start: int
    length: int


@dataclass(frozen=True)
class ProofRequest:
    """What a `request` message asks a core to prove (id and priority live in the wire layer)."""

    fork: int
    block: BlockRequest | None = None
    hash: HashRequest | None = None
    seek: SeekRequest | None = None
    upgrade: UpgradeRequest | None = None
    manifest: bool = False


@dataclass(frozen=True)
class BlockProof:
    index: int  # block number
    value: bytes
    nodes: list[TreeNode] = field(default_factory=list)


@dataclass(frozen=True)
class HashProof:
    index: int  # tree node index
    nodes: list[TreeNode] = field(default_factory=list)


@dataclass(frozen=True)
class SeekProof:
    bytes: int
    nodes: list[TreeNode] = field(default_factory=list)


@dataclass(frozen=True)
class UpgradeProof:
    start: int
    length: int
    nodes: list[TreeNode] = field(default_factory=list)
    additional_nodes: list[TreeNode] = field(default_factory=list)
    signature: bytes = b""


@dataclass(frozen=True)
class Proof:
    """The proof part of a `data` message (the request id lives in the wire layer)."""

    fork: int
    block: BlockProof | None = None
    hash: HashProof | None = None
    seek: SeekProof | None = None
    upgrade: UpgradeProof | None = None
    manifest: bytes | None = None  # encoded manifest (section 3.4), when asked for


class CoreEvent(NamedTuple):
    """What changed in a core: "append" (local append), "upgrade" (a verified proof raised
    the length) or "block" (a block value arrived; `index` says which)."""

    kind: str  # Literal["append", "upgrade", "block"]
    length: int
    index: int | None = None  # type: ignore[assignment]  # shadows tuple.index(), as in TreeNode
