"""Keys of a Hypercore 11 core: the signing key pair, the manifest, the core key, the
discovery key, and the text forms of keys (z-base-32, hex, QR payload).

Hypercore 11's default core key is the hash of a v1 manifest naming one Ed25519 signer
(`keys[].default_manifest` in tests/fixtures/vectors.json, checked by
tests/unit/test_hypercore_vectors.py); "compat" cores use the public key itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import nacl.bindings

KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64


def _blake2b(data: bytes, key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=32, key=key).digest()


def namespace(name: str, count: int) -> list[bytes]:
    """hypercore-crypto's namespace(): BLAKE2b(BLAKE2b(name) || byte(i)) for i < count."""
    base = _blake2b(name.encode())
    return [_blake2b(base + bytes([i])) for i in range(count)]


(
    TREE,
    REPLICATE_INITIATOR,
    REPLICATE_RESPONDER,
    MANIFEST,
    DEFAULT_NAMESPACE,
    DEFAULT_ENCRYPTION,
) = namespace("hypercore", 6)


class KeyPair(NamedTuple):
    """An Ed25519 key pair; secret_key is libsodium's 64 bytes (seed || public key)."""

    public_key: bytes
    secret_key: bytes

    def __repr__(self) -> str:  # never print the secret half, not even in a traceback
        return f"KeyPair(public_key={self.public_key.hex()}, secret_key=<hidden>)"


def generate_keypair(seed: bytes | None = None) -> KeyPair:
    """A fresh random key pair, or the deterministic one for a 32-byte seed."""
    if seed is None:
        public_key, secret_key = nacl.bindings.crypto_sign_keypair()
    else:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a key pair seed must be {SEED_BYTES} bytes, got {len(seed)}")
        public_key, secret_key = nacl.bindings.crypto_sign_seed_keypair(seed)
    return KeyPair(public_key, secret_key)


# --- manifest (lib/messages.js `manifest`, lib/verifier.js) ---------------------------

MAX_MANIFEST_VERSION = 3  # Node rejects versions above 3
MAX_SIGNERS = 256  # a sanity bound for decoding; real manifests have a handful


@dataclass(frozen=True)
class Signer:
    public_key: bytes
    namespace: bytes = DEFAULT_NAMESPACE
    signature: str = "ed25519"


@dataclass(frozen=True)
class Prologue:
    hash: bytes
    length: int


@dataclass(frozen=True)
class Manifest:
    version: int = 1
    hash: str = "blake2b"
    allow_patch: bool = False
    quorum: int = 1
    signers: tuple[Signer, ...] = ()
    prologue: Prologue | None = None
    linked: tuple[bytes, ...] | None = None
    user_data: bytes | None = None


def default_manifest(public_key: bytes) -> Manifest:
    """Node's `Verifier.defaultSignerManifest(publicKey)`: one ed25519 signer, quorum 1."""
    _check_key(public_key, "public key")
    return Manifest(signers=(Signer(public_key=bytes(public_key)),))


def encode_uint(n: int) -> bytes:
    """compact-encoding `uint` (a little-endian varint with FD/FE/FF prefixes)."""
    if n < 0:
        raise ValueError("uint must not be negative")
    if n <= 0xFC:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def decode_uint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, new position); raises ValueError when the buffer ends early."""
    if pos >= len(buf):
        raise ValueError("truncated uint")
    first = buf[pos]
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first, 0)
    if not width:
        return first, pos + 1
    end = pos + 1 + width
    if end > len(buf):
        raise ValueError("truncated uint")
    return int.from_bytes(buf[pos + 1 : end], "little"), end


def _take(buf: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(buf):
        raise ValueError("manifest is truncated")
    return bytes(buf[pos : pos + n]), pos + n


def encode_manifest(m: Manifest) -> bytes:
    """The v1-v3 manifest encoding (section 3.4); default manifests are 70 bytes."""
    if not 1 <= m.version <= MAX_MANIFEST_VERSION:
        raise ValueError(f"cannot encode manifest version {m.version}")
    if m.version < 2 and (m.linked is not None or m.user_data is not None):
        raise ValueError("linked and userData need manifest version 2 or later")
    flags = (
        (1 if m.allow_patch else 0)
        | (2 if m.prologue is not None else 0)
        | (4 if m.linked is not None else 0)
        | (8 if m.user_data is not None else 0)
    )
    out = [encode_uint(m.version), encode_uint(flags), encode_uint(0), encode_uint(m.quorum)]
    out.append(encode_uint(len(m.signers)))
    for s in m.signers:
        if s.signature != "ed25519":
            raise ValueError(f"unknown signature scheme {s.signature!r}")
        out += [encode_uint(0), _checked(s.namespace), _checked(s.public_key)]
    if m.prologue is not None:
        out += [_checked(m.prologue.hash), encode_uint(m.prologue.length)]
    if m.linked is not None:
        out.append(encode_uint(len(m.linked)))
        out += [_checked(k) for k in m.linked]
    if m.user_data is not None:
        out += [encode_uint(len(m.user_data)), m.user_data]
    return b"".join(out)


def decode_manifest(b: bytes) -> Manifest:
    """Decode a v1-v3 manifest; raises ValueError for anything malformed or unsupported."""
    version, pos = decode_uint(b, 0)
    if version == 0:
        raise ValueError("legacy v0 manifests are not supported")
    if version > MAX_MANIFEST_VERSION:
        raise ValueError(f"unknown manifest version {version}")
    flags, pos = decode_uint(b, pos)
    hash_type, pos = decode_uint(b, pos)
    if hash_type != 0:
        raise ValueError(f"unknown manifest hash type {hash_type}")
    quorum, pos = decode_uint(b, pos)
    count, pos = decode_uint(b, pos)
    if count > MAX_SIGNERS:
        raise ValueError(f"manifest names {count} signers (at most {MAX_SIGNERS})")
    signers = []
    for _ in range(count):
        scheme, pos = decode_uint(b, pos)
        if scheme != 0:
            raise ValueError(f"unknown signature scheme {scheme}")
        ns, pos = _take(b, pos, 32)
        pk, pos = _take(b, pos, 32)
        signers.append(Signer(public_key=pk, namespace=ns))
    prologue = linked = user_data = None
    if flags & 2:
        h, pos = _take(b, pos, 32)
        length, pos = decode_uint(b, pos)
        prologue = Prologue(h, length)
    if flags & 4 and version >= 2:
        n, pos = decode_uint(b, pos)
        keys = []
        for _ in range(n):
            k, pos = _take(b, pos, 32)
            keys.append(k)
        linked = tuple(keys)
    if flags & 8 and version >= 2:
        n, pos = decode_uint(b, pos)
        user_data, pos = _take(b, pos, n)
    return Manifest(
        version=version,
        allow_patch=bool(flags & 1),
        quorum=quorum,
        signers=tuple(signers),
        prologue=prologue,
        linked=linked,
        user_data=user_data,
    )


def manifest_hash(encoded: bytes) -> bytes:
    """BLAKE2b-256(MANIFEST namespace || encoded manifest): the default core key."""
    return _blake2b(MANIFEST + encoded)


def core_key(public_key: bytes, compat: bool = False) -> bytes:
    """Node's `Hypercore.key(publicKey, { compat })`."""
    _check_key(public_key, "public key")
    if compat:
        return bytes(public_key)
    return manifest_hash(encode_manifest(default_manifest(public_key)))


def discovery_key(key: bytes) -> bytes:
    """BLAKE2b-256 of b"hypercore" keyed with the core key: names a core without revealing it."""
    _check_key(key, "core key")
    return _blake2b(b"hypercore", key=key)


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"a {what} must be {KEY_BYTES} bytes")


def _checked(b: bytes) -> bytes:
    _check_key(b, "manifest key")
    return bytes(b)


# --- text forms --------------------------------------------------------------------

Z32_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_Z32_INDEX = {c: i for i, c in enumerate(Z32_ALPHABET)}
QR_PREFIX = "HYPERPI:"


def z32_encode(b: bytes) -> str:
    """z-base-32 (as Holepunch's `z32` and Hypercore tools print keys): 52 chars for 32 bytes."""
    bits = len(b) * 8
    n = int.from_bytes(b, "big") << ((5 - bits % 5) % 5)
    chars = (bits + 4) // 5
    return "".join(Z32_ALPHABET[(n >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def z32_decode(s: str) -> bytes:
    """Inverse of z32_encode; raises ValueError on characters outside the alphabet."""
    n = 0
    for c in s:
        v = _Z32_INDEX.get(c)
        if v is None:
            raise ValueError(f"{c!r} is not a z-base-32 character")
        n = (n << 5) | v
    nbytes = len(s) * 5 // 8
    return (n >> (len(s) * 5 - nbytes * 8)).to_bytes(nbytes, "big")


def qr_payload(key: bytes) -> str:
    """`HYPERPI:` + RFC 4648 base32 without padding (QR alphanumeric mode)."""
    _check_key(key, "core key")
    return QR_PREFIX + base64.b32encode(key).decode().rstrip("=")


def parse_key(text: str) -> bytes:
    """A 32-byte key from z-base-32, 64-char hex, or a QR payload; ValueError otherwise."""
    t = text.strip()
    if t.upper().startswith(QR_PREFIX):
        body = t[len(QR_PREFIX) :].upper()
        try:
            key = base64.b32decode(body + "=" * (-len(body) % 8))
        except binascii.Error:
            raise ValueError("the QR payload is not valid base32") from None
    elif len(t) == 64 and all(c in "0123456789abcdefABCDEF" for c in t):
        key = bytes.fromhex(t)
    elif len(t) == 52:
        try:
            key = z32_decode(t.lower())
        except ValueError as error:
            raise ValueError(f"not a z-base-32 key: {error}") from None
    else:
        raise ValueError(
            f"not a key: expected 52 z-base-32 characters, 64 hex digits or {QR_PREFIX}..., got {len(t)} characters"
        )
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key must be {KEY_BYTES} bytes, this one has {len(key)}")
    return key
