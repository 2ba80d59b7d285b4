"""The Hypercore 11 core in pure Python (sans-IO): keys and manifests, the flat-tree
Merkle tree, signatures, proofs, and SQLite storage of many cores.

    from hyperpi.hypercore import Core, Store
    with Store("data") as store:
        core = Core.create(store)
        core.append([b"hello"])
"""

from .core import (
    Core,
    CoreEvent,
    CorruptStore,
    HypercoreError,
    NotWritable,
    ProofUnavailable,
    StorageError,
    Store,
    VerificationError,
)
from .errors import INVALID_REQUEST, NOT_AVAILABLE, DiskFull
from .keys import KeyPair, core_key, discovery_key, generate_keypair, parse_key, qr_payload, z32_decode, z32_encode

__all__ = [
    "INVALID_REQUEST",
    "NOT_AVAILABLE",
    "Core",
    "CoreEvent",
    "CorruptStore",
    "DiskFull",
    "HypercoreError",
    "KeyPair",
    "NotWritable",
    "ProofUnavailable",
    "StorageError",
    "Store",
    "VerificationError",
    "core_key",
    "discovery_key",
    "generate_keypair",
    "parse_key",
    "qr_payload",
    "z32_decode",
    "z32_encode",
]
