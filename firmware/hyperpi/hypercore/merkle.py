"""Merkle tree hashing and signatures of Hypercore 11 (sections 4.2-4.4).

Leaf, parent and tree hashes are BLAKE2b-256 with one-byte type prefixes; what gets signed
is the tree hash with the length and fork (112 bytes for manifest cores, 80 for compat).
Default cores wrap their Ed25519 signature in the one-signer "multisig" encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b

import nacl.bindings
import nacl.exceptions

from .keys import TREE, Manifest, decode_uint, encode_uint
from .types import TreeNode

_LEAF = b"\x00"
_PARENT = PARENT_PREFIX = b"\x01"
_ROOT = b"\x02"


def leaf_hash(block: bytes) -> bytes:
    return blake2b(_LEAF + len(block).to_bytes(8, "little") + block, digest_size=32).digest()


def leaf_node(block_index: int, block: bytes) -> TreeNode:
    return TreeNode(2 * block_index, len(block), leaf_hash(block))


def parent_node(index: int, left: TreeNode, right: TreeNode) -> TreeNode:
    """The node over two children; `left` must be the child with the smaller index."""
    size = left.size + right.size
    h = blake2b(_PARENT + size.to_bytes(8, "little") + left.hash + right.hash, digest_size=32).digest()
    return TreeNode(index, size, h)


def tree_hash(roots: Iterable[TreeNode]) -> bytes:
    """The hash the signature covers: all roots, left to right, with index and size."""
    parts = [_ROOT]
    for r in roots:
        parts += [r.hash, r.index.to_bytes(8, "little"), r.size.to_bytes(8, "little")]
    return blake2b(b"".join(parts), digest_size=32).digest()


def append_leaves(
    roots: list[TreeNode], first_block: int, blocks: Sequence[bytes]
) -> tuple[list[TreeNode], list[TreeNode]]:
    """Append blocks to a tree given by its roots: (new roots, every new node in order).

    Hot path of every append: the flat-tree math is inlined. After block n lands, the
    tree has n + 1 blocks, and the new leaf merges with one root per trailing zero bit of
    n + 1; the parent made at depth d sits at offset n >> d.
    """
    roots = list(roots)
    new_nodes: list[TreeNode] = []
    append = new_nodes.append
    n = first_block
    for block in blocks:
        size = len(block)
        node = TreeNode(2 * n, size, blake2b(_LEAF + size.to_bytes(8, "little") + block, digest_size=32).digest())
        append(node)
        merges = ((n + 1) & -(n + 1)).bit_length() - 1
        for d in range(1, merges + 1):
            left = roots.pop()
            size = left.size + node.size
            node = TreeNode(
                (((n >> d) << 1 | 1) << d) - 1,
                size,
                blake2b(_PARENT + size.to_bytes(8, "little") + left.hash + node.hash, digest_size=32).digest(),
            )
            append(node)
        roots.append(node)
        n += 1
    return roots, new_nodes


def signable(key: bytes, tree_hash_: bytes, length: int, fork: int) -> bytes:
    """TREE || manifest hash (the key) || tree hash || u64 length || u64 fork: 112 bytes."""
    return TREE + key + tree_hash_ + length.to_bytes(8, "little") + fork.to_bytes(8, "little")


def signable_compat(tree_hash_: bytes, length: int, fork: int) -> bytes:
    """TREE || tree hash || u64 length || u64 fork: 80 bytes (compat cores)."""
    return TREE + tree_hash_ + length.to_bytes(8, "little") + fork.to_bytes(8, "little")


def encode_multisig(signature: bytes, signer: int = 0) -> bytes:
    """One signer's proof without patches: 01 <signer> <64-byte sig> 00 00."""
    return encode_uint(1) + encode_uint(signer) + signature + encode_uint(0) + encode_uint(0)


def decode_multisig(data: bytes) -> list[tuple[int, bytes, int]]:
    """[(signer index, signature, patch)]; raises ValueError when malformed."""
    count, pos = decode_uint(data, 0)
    if count > 256:
        raise ValueError("too many signatures in a multisig")
    proofs = []
    for _ in range(count):
        signer, pos = decode_uint(data, pos)
        sig = data[pos : pos + 64]
        if len(sig) != 64:
            raise ValueError("truncated multisig")
        patch, pos = decode_uint(data, pos + 64)
        proofs.append((signer, bytes(sig), patch))
    patch_nodes, pos = decode_uint(data, pos)
    if patch_nodes:
        raise ValueError("multisig patches are not supported")
    return proofs


def ed25519_sign(secret_key: bytes, message: bytes) -> bytes:
    return nacl.bindings.crypto_sign(message, secret_key)[:64]


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def sign_tree(secret_key: bytes, key: bytes, compat: bool, tree_hash_: bytes, length: int, fork: int) -> bytes:
    """The signature bytes a writer stores and sends for (tree hash, length, fork)."""
    if compat:
        return ed25519_sign(secret_key, signable_compat(tree_hash_, length, fork))
    return encode_multisig(ed25519_sign(secret_key, signable(key, tree_hash_, length, fork)))


def verify_tree(
    key: bytes,
    manifest: Manifest | None,
    tree_hash_: bytes,
    length: int,
    fork: int,
    signature: bytes,
) -> bool:
    """Node's `Verifier.verify`: compat (no manifest, or one signer whose key is the core
    key) checks a raw signature; otherwise a quorum of multisig proofs over 112 bytes."""
    if manifest is None or is_compat(key, manifest):
        return ed25519_verify(key, signable_compat(tree_hash_, length, fork), signature)
    if manifest.prologue is not None and length <= manifest.prologue.length:
        return tree_hash_ == manifest.prologue.hash
    try:
        proofs = decode_multisig(signature)
    except ValueError:
        return False
    if len(proofs) < manifest.quorum or manifest.quorum < 1:
        return False
    message = signable(key, tree_hash_, length, fork)
    seen: set[int] = set()
    for signer, sig, patch in proofs:
        if signer in seen or signer >= len(manifest.signers) or patch:
            return False
        seen.add(signer)
        if not ed25519_verify(manifest.signers[signer].public_key, message, sig):
            return False
    return True


def is_compat(key: bytes, manifest: Manifest) -> bool:
    """Node's `isCompat`: a single signer whose public key is the core key itself."""
    return len(manifest.signers) == 1 and manifest.signers[0].public_key == key
