"""The `hypercore/alpha` channel: its open handshake, its 10 message types, and the capability.

Encodings follow Node hypercore 11.39.5 `lib/messages.js` (`wire.*`; protocol doc 7.1-7.2).
`Request` and `Data` carry the shared `ProofRequest` / `Proof` of `hyperpi.hypercore.types`,
so the replicator hands a core's proof straight to the codec and back:

    Data(request_id=7, proof=core_proof).encode()     -> payload bytes for protomux type 3
    decode_message(type, payload)                      -> Sync | Request | ... | None (unknown type)

Decoders raise `DecodeError` (a `WireError`) on truncated or malformed input and ignore
trailing bytes, as Node does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

from hyperpi.hypercore.keys import REPLICATE_INITIATOR, REPLICATE_RESPONDER
from hyperpi.hypercore.types import (
    BlockProof,
    BlockRequest,
    HashProof,
    HashRequest,
    Proof,
    ProofRequest,
    SeekProof,
    SeekRequest,
    TreeNode,
    UpgradeProof,
    UpgradeRequest,
    quick_init,
)

from .encoding import (
    MAX_ARRAY_LENGTH,
    DecodeError,
    State,
    decode_buffer,
    decode_optional_buffer,
    decode_raw,
    decode_string,
    decode_uint,
    decode_uint32array,
    encode_buffer,
    encode_optional_buffer,
    encode_string,
    encode_uint,
    encode_uint32array,
    uint_at,
    uint_bytes,
)

PROTOCOL = "hypercore/alpha"


def capability(handshake_hash: bytes, key: bytes, is_initiator: bool) -> bytes:
    """Proof of knowing the core key on this connection (7.1).

    `is_initiator` is the Noise role of the side that sends the capability: use your own role
    to make yours and the remote's role to check theirs.
    """
    ns = REPLICATE_INITIATOR if is_initiator else REPLICATE_RESPONDER
    return hashlib.blake2b(ns + key, digest_size=32, key=handshake_hash).digest()


def _take(state: State, n: int) -> bytes:
    if state.end - state.start < n:
        raise DecodeError(f"truncated: needed {n} bytes")
    b = state.buffer[state.start : state.start + n]
    state.start += n
    return b


# --- channel handshake ----------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """The payload of the channel `open`: flags (bit0 seeks) and the 32-byte capability."""

    capability: bytes
    seeks: bool = True  # Node always sends seeks

    def encode(self) -> bytes:
        if len(self.capability) != 32:
            raise ValueError("capability must be 32 bytes")
        return (b"\x01" if self.seeks else b"\x00") + self.capability

    @classmethod
    def decode(cls, payload: bytes) -> Handshake:
        state = State(payload)
        flags = decode_uint(state)
        return cls(capability=_take(state, 32), seeks=bool(flags & 1))


# --- tree nodes -----------------------------------------------------------------------------


def _encode_nodes(out: bytearray, nodes: list[TreeNode]) -> None:
    encode_uint(out, len(nodes))
    for n in nodes:
        encode_uint(out, n.index)
        encode_uint(out, n.size)
        if len(n.hash) != 32:
            raise ValueError("tree node hash must be 32 bytes")
        out += n.hash


def _decode_nodes(state: State) -> list[TreeNode]:
    count = decode_uint(state)
    if count > MAX_ARRAY_LENGTH:
        raise DecodeError(f"{count} tree nodes is above the limit of {MAX_ARRAY_LENGTH}")
    return [TreeNode(decode_uint(state), decode_uint(state), _take(state, 32)) for _ in range(count)]


# --- manifest extent -------------------------------------------------------------------------


def _skip_signer(state: State) -> None:
    if decode_uint(state) != 0:
        raise DecodeError("manifest: unknown signature algorithm")
    _take(state, 64)  # namespace, public key


def _skip_signers(state: State) -> None:
    count = decode_uint(state)
    if count > MAX_ARRAY_LENGTH:
        raise DecodeError("manifest: too many signers")
    for _ in range(count):
        _skip_signer(state)


def _read_manifest(state: State) -> bytes:
    """The exact bytes of an inline manifest (3.4 encoding): data carries it unprefixed, so its
    structure tells where it ends. Checks only what Node's decoder checks."""
    start = state.start
    version = decode_uint(state)
    if version == 0:
        if decode_uint(state) != 0:
            raise DecodeError("manifest: unknown hash algorithm")
        kind = decode_uint(state)
        if kind == 0:
            _take(state, 32)
        elif kind == 1:
            _skip_signer(state)
        elif kind == 2:
            decode_uint(state)  # flags
            decode_uint(state)  # quorum
            _skip_signers(state)
        else:
            raise DecodeError(f"manifest: unknown v0 type {kind}")
    else:
        if version > 3:
            raise DecodeError(f"manifest: unknown version {version}")
        flags = decode_uint(state)
        if decode_uint(state) != 0:
            raise DecodeError("manifest: unknown hash algorithm")
        decode_uint(state)  # quorum
        _skip_signers(state)
        if flags & 2:  # prologue: hash + length
            _take(state, 32)
            decode_uint(state)
        if flags & 4:  # linked cores
            count = decode_uint(state)
            if count > MAX_ARRAY_LENGTH:
                raise DecodeError("manifest: too many linked cores")
            _take(state, 32 * count)
        if flags & 8:  # user data
            decode_buffer(state)
    return state.buffer[start : state.start]


# --- messages -------------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True)
class Sync:
    TYPE: ClassVar[int] = 0
    fork: int
    length: int
    remote_length: int
    can_upgrade: bool = False
    uploading: bool = False
    downloading: bool = False
    has_manifest: bool = False
    allow_push: bool = False

    def encode(self) -> bytes:
        out = bytearray()
        flags = (
            self.can_upgrade
            | self.uploading << 1
            | self.downloading << 2
            | self.has_manifest << 3
            | self.allow_push << 4
        )
        encode_uint(out, flags)
        encode_uint(out, self.fork)
        encode_uint(out, self.length)
        encode_uint(out, self.remote_length)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Sync:
        s = State(payload)
        flags = decode_uint(s)
        return cls(
            decode_uint(s),
            decode_uint(s),
            decode_uint(s),
            bool(flags & 1),
            bool(flags & 2),
            bool(flags & 4),
            bool(flags & 8),
            bool(flags & 16),
        )


@quick_init
@dataclass(frozen=True)
class Request:
    """`request`: what to prove (`ProofRequest`), the request id and the priority."""

    TYPE: ClassVar[int] = 1
    id: int
    proof_request: ProofRequest
    priority: int = 0

    def encode(self) -> bytes:
        r = self.proof_request
        block = r.block
        if block is not None and r.hash is None and r.seek is None and r.upgrade is None and not r.manifest:
            if not self.priority:  # a download's block request: one per block, so no bytearray
                return b"".join(
                    (b"\x01", uint_bytes(self.id), uint_bytes(r.fork), uint_bytes(block.index), uint_bytes(block.nodes))
                )
        flags = (
            (block is not None)
            | (r.hash is not None) << 1
            | (r.seek is not None) << 2
            | (r.upgrade is not None) << 3
            | bool(r.manifest) << 4
            | bool(self.priority) << 5
        )
        out = bytearray()
        encode_uint(out, flags)
        encode_uint(out, self.id)
        encode_uint(out, r.fork)
        if block is not None:
            encode_uint(out, block.index)
            encode_uint(out, block.nodes)
        if r.hash is not None:
            encode_uint(out, r.hash.index)
            encode_uint(out, r.hash.nodes)
        if r.seek is not None:
            encode_uint(out, r.seek.bytes)
            encode_uint(out, r.seek.padding)
        if r.upgrade is not None:
            encode_uint(out, r.upgrade.start)
            encode_uint(out, r.upgrade.length)
        if self.priority:
            encode_uint(out, self.priority)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Request:
        b, end = payload, len(payload)
        flags, pos = uint_at(b, 0, end)
        id, pos = uint_at(b, pos, end)
        fork, pos = uint_at(b, pos, end)
        block = hash = seek = upgrade = None
        if flags & 1:
            index, pos = uint_at(b, pos, end)
            nodes, pos = uint_at(b, pos, end)
            block = BlockRequest(index, nodes)
        if flags & 2:
            index, pos = uint_at(b, pos, end)
            nodes, pos = uint_at(b, pos, end)
            hash = HashRequest(index, nodes)
        if flags & 4:
            nbytes, pos = uint_at(b, pos, end)
            padding, pos = uint_at(b, pos, end)
            seek = SeekRequest(nbytes, padding)
        if flags & 8:
            start, pos = uint_at(b, pos, end)
            length, pos = uint_at(b, pos, end)
            upgrade = UpgradeRequest(start, length)
        priority = uint_at(b, pos, end)[0] if flags & 32 else 0
        return cls(id, ProofRequest(fork, block, hash, seek, upgrade, bool(flags & 16)), priority)


@dataclass(frozen=True)
class Cancel:
    TYPE: ClassVar[int] = 2
    request: int

    def encode(self) -> bytes:
        out = bytearray()
        encode_uint(out, self.request)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Cancel:
        return cls(decode_uint(State(payload)))


@quick_init
@dataclass(frozen=True)
class Data:
    """`data`: the answer to request `request_id`, carrying a core's `Proof`."""

    TYPE: ClassVar[int] = 3
    request_id: int
    proof: Proof

    def encode(self) -> bytes:
        p = self.proof
        block = p.block
        if block is not None and p.hash is None and p.seek is None and p.upgrade is None and not p.manifest:
            return _encode_block_data(self.request_id, p.fork, block)  # a download's answers
        flags = (
            (p.block is not None)
            | (p.hash is not None) << 1
            | (p.seek is not None) << 2
            | (p.upgrade is not None) << 3
            | bool(p.manifest) << 4
        )
        out = bytearray()
        encode_uint(out, flags)
        encode_uint(out, self.request_id)
        encode_uint(out, p.fork)
        if p.block is not None:
            encode_uint(out, p.block.index)
            encode_buffer(out, p.block.value)
            _encode_nodes(out, p.block.nodes)
        if p.hash is not None:
            encode_uint(out, p.hash.index)
            _encode_nodes(out, p.hash.nodes)
        if p.seek is not None:
            encode_uint(out, p.seek.bytes)
            _encode_nodes(out, p.seek.nodes)
        if p.upgrade is not None:
            u = p.upgrade
            encode_uint(out, u.start)
            encode_uint(out, u.length)
            _encode_nodes(out, u.nodes)
            _encode_nodes(out, u.additional_nodes)
            encode_optional_buffer(out, u.signature)
        if p.manifest:
            out += p.manifest  # already in the 3.4 encoding; no length prefix
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Data:
        if payload[:1] == b"\x01":  # a block and nothing else: a download's answers
            return _decode_block_data(payload)
        s = State(payload)
        flags = decode_uint(s)
        request_id = decode_uint(s)
        fork = decode_uint(s)
        block = BlockProof(decode_uint(s), decode_buffer(s), _decode_nodes(s)) if flags & 1 else None
        hash = HashProof(decode_uint(s), _decode_nodes(s)) if flags & 2 else None
        seek = SeekProof(decode_uint(s), _decode_nodes(s)) if flags & 4 else None
        upgrade = None
        if flags & 8:
            start, length = decode_uint(s), decode_uint(s)
            nodes, additional = _decode_nodes(s), _decode_nodes(s)
            upgrade = UpgradeProof(start, length, nodes, additional, decode_optional_buffer(s) or b"")
        manifest = _read_manifest(s) if flags & 16 else None
        return cls(request_id, Proof(fork, block, hash, seek, upgrade, manifest))


def _encode_block_data(request_id: int, fork: int, block: BlockProof) -> bytes:
    """Data.encode of a proof carrying only a block, without a bytearray per field."""
    value = block.value
    parts = [b"\x01", uint_bytes(request_id), uint_bytes(fork), uint_bytes(block.index)]
    parts += (uint_bytes(len(value)), value, uint_bytes(len(block.nodes)))
    for n in block.nodes:
        if len(n.hash) != 32:
            raise ValueError("tree node hash must be 32 bytes")
        parts += (uint_bytes(n.index), uint_bytes(n.size), n.hash)
    return b"".join(parts)


def _decode_block_data(payload: bytes) -> Data:
    """Data.decode of flags 1 (a block and its nodes only), field by field without a State.
    One-byte uints (most of them) are read inline; a read past the end is an IndexError."""
    b, end = payload, len(payload)
    try:
        request_id, pos = (b[1], 2) if b[1] <= 0xFC else uint_at(b, 1, end)
        fork, pos = (b[pos], pos + 1) if b[pos] <= 0xFC else uint_at(b, pos, end)
        index, pos = uint_at(b, pos, end)
        size, pos = (b[pos], pos + 1) if b[pos] <= 0xFC else uint_at(b, pos, end)
        if end - pos < size:
            raise DecodeError(f"truncated: needed {size} bytes, {end - pos} left")
        value = b[pos : pos + size]
        pos += size
        count, pos = (b[pos], pos + 1) if b[pos] <= 0xFC else uint_at(b, pos, end)
        if count > MAX_ARRAY_LENGTH:
            raise DecodeError(f"{count} tree nodes is above the limit of {MAX_ARRAY_LENGTH}")
        nodes = []
        for _ in range(count):
            node_index, pos = uint_at(b, pos, end)
            node_size, pos = uint_at(b, pos, end)
            if end - pos < 32:
                raise DecodeError(f"truncated: needed 32 bytes, {end - pos} left")
            nodes.append(TreeNode(node_index, node_size, b[pos : pos + 32]))
            pos += 32
    except IndexError:
        raise DecodeError("truncated: expected a uint") from None
    return Data(request_id, Proof(fork, BlockProof(index, value, nodes)))


@quick_init
@dataclass(frozen=True)
class NoData:
    """`noData`: reasons 0 none, 1 NOT_AVAILABLE, 2 INVALID_REQUEST."""

    TYPE: ClassVar[int] = 4
    request: int
    reason: int = 0

    def encode(self) -> bytes:
        out = bytearray()
        encode_uint(out, self.request)
        encode_uint(out, 1 if self.reason else 0)
        if self.reason:
            encode_uint(out, self.reason)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> NoData:
        s = State(payload)
        request = decode_uint(s)
        flags = decode_uint(s) if s.start < s.end else 0
        return cls(request, decode_uint(s) if flags & 1 else 0)


@dataclass(frozen=True)
class _Span:
    """The body shared by `want` and `unwant`."""

    start: int
    length: int
    any: bool = False

    def encode(self) -> bytes:
        out = bytearray()
        encode_uint(out, self.start)
        encode_uint(out, self.length)
        if self.any:  # the flags field is written only when non-zero
            out.append(1)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes):  # -> the subclass
        s = State(payload)
        start, length = decode_uint(s), decode_uint(s)
        flags = decode_uint(s) if s.start < s.end else 0
        return cls(start, length, bool(flags & 1))


@dataclass(frozen=True)
class Want(_Span):
    """The sender wants blocks [start, start + length); `any` = any of them will do."""

    TYPE: ClassVar[int] = 5


@dataclass(frozen=True)
class Unwant(_Span):
    TYPE: ClassVar[int] = 6


@dataclass(frozen=True)
class Bitfield:
    """Bit j of word w (LSB first): the sender has block start + 32w + j."""

    TYPE: ClassVar[int] = 7
    start: int
    bitfield: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        out = bytearray()
        encode_uint(out, self.start)
        encode_uint32array(out, self.bitfield)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Bitfield:
        s = State(payload)
        return cls(decode_uint(s), decode_uint32array(s))


@quick_init
@dataclass(frozen=True)
class Range:
    """The sender has (or with `drop`, no longer has) blocks [start, start + length)."""

    TYPE: ClassVar[int] = 8
    start: int
    length: int
    drop: bool = False

    def encode(self) -> bytes:
        out = bytearray()
        encode_uint(out, self.drop | (self.length == 1) << 1)
        encode_uint(out, self.start)
        if self.length != 1:
            encode_uint(out, self.length)
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Range:
        s = State(payload)
        flags = decode_uint(s)
        start = decode_uint(s)
        return cls(start, 1 if flags & 2 else decode_uint(s), bool(flags & 1))


@dataclass(frozen=True)
class Extension:
    """An empty name means "the same name as the previous extension message this way"."""

    TYPE: ClassVar[int] = 9
    name: str
    message: bytes

    def encode(self) -> bytes:
        out = bytearray()
        encode_string(out, self.name)
        out += self.message
        return bytes(out)

    @classmethod
    def decode(cls, payload: bytes) -> Extension:
        s = State(payload)
        return cls(decode_string(s), decode_raw(s))


Message = Sync | Request | Cancel | Data | NoData | Want | Unwant | Bitfield | Range | Extension
MESSAGE_TYPES: tuple[type[Message], ...] = (
    Sync,
    Request,
    Cancel,
    Data,
    NoData,
    Want,
    Unwant,
    Bitfield,
    Range,
    Extension,
)


def decode_message(type: int, payload: bytes) -> Message | None:
    """Decode a channel message by its protomux type; None for types this version lacks
    (Node ignores those too)."""
    if 0 <= type < len(MESSAGE_TYPES):
        return MESSAGE_TYPES[type].decode(payload)
    return None
