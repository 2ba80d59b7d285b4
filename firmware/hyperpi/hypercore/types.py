"""Plain data shared by the Merkle tree, the proofs and the wire codecs.

These mirror the fields of Node hypercore 11's `request` and `data` messages
(`lib/messages.js` `wire.request` / `wire.data`), so the wire layer only moves bytes and
the core only reasons about trees. Indexes of tree nodes are flat-tree indexes; block
indexes are block numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Give a frozen dataclass an __init__ that fills the instance's __dict__ directly.

    The generated one sets each field through object.__setattr__ (to get past the frozen
    guard), which makes building one cost ~4x a plain class, and a download builds several
    per block. The fields, their defaults and the frozen guard afterwards stay as they are.
    """
    namespace: dict[str, Any] = {"_MISSING": dataclasses.MISSING}
    params, lines = [], []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            lines.append(f"    if {f.name} is _MISSING: {f.name} = _factory_{f.name}()")
        else:
            params.append(f.name)
    lines.append("    d = self.__dict__")
    lines += [f"    d['{f.name}'] = {f.name}" for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class TreeNode(NamedTuple):
    """One Merkle tree node: flat-tree index, bytes of blocks below it, BLAKE2b-256 hash."""

    # `index` shadows tuple.index(): the flat-tree index is this node's name everywhere.
    index: int  # type: ignore[assignment]
    size: int
    hash: bytes


@quick_init
@dataclass(frozen=True)
class BlockRequest:
    index: int  # block number
    nodes: int  # how many levels of ancestors-plus-siblings the requester lacks


@quick_init
@dataclass(frozen=True)
class HashRequest:
    index: int  # tree node index
    nodes: int


@quick_init
@dataclass(frozen=True)
class SeekRequest:
    bytes: int
    padding: int


@quick_init
@dataclass(frozen=True)
class UpgradeRequest:
    start: int
    length: int


@quick_init
@dataclass(frozen=True)
class ProofRequest:
    """What a `request` message asks a core to prove (id and priority live in the wire layer)."""

    fork: int
    block: BlockRequest | None = None
    hash: HashRequest | None = None
    seek: SeekRequest | None = None
    upgrade: UpgradeRequest | None = None
    manifest: bool = False


@quick_init
@dataclass(frozen=True)
class BlockProof:
    index: int  # block number
    value: bytes
    nodes: list[TreeNode] = field(default_factory=list)


@quick_init
@dataclass(frozen=True)
class HashProof:
    index: int  # tree node index
    nodes: list[TreeNode] = field(default_factory=list)


@quick_init
@dataclass(frozen=True)
class SeekProof:
    bytes: int
    nodes: list[TreeNode] = field(default_factory=list)


@quick_init
@dataclass(frozen=True)
class UpgradeProof:
    start: int
    length: int
    nodes: list[TreeNode] = field(default_factory=list)
    additional_nodes: list[TreeNode] = field(default_factory=list)
    signature: bytes = b""


@quick_init
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
