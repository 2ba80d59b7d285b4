"""Flat-tree index math: the in-order numbering of a Merkle tree's nodes.

Block i is leaf 2i; a node at depth d (leaves are depth 0) and offset o has index
(2o + 1) * 2**d - 1. These are pure functions of one idea, after Holepunch's `flat-tree`
module (`index.js`), which Node hypercore uses for its tree and proofs.
"""

from __future__ import annotations


def depth(index: int) -> int:
    """Number of trailing 1-bits: 0 for leaves."""
    return ((index + 1) & ~index).bit_length() - 1


def offset(index: int, d: int | None = None) -> int:
    """Position of the node among the nodes of its depth, left to right."""
    if not index & 1:
        return index >> 1
    if d is None:
        d = depth(index)
    return (((index + 1) >> d) - 1) >> 1


def index(d: int, o: int) -> int:
    """The flat index of the node at depth d and offset o."""
    return ((o << 1) + 1 << d) - 1


def parent(i: int) -> int:
    # With t = 2**depth(i), the parent sets bit d and clears bit d+1 (hot in proofs: bit
    # tricks instead of depth/offset/index calls).
    t = (i + 1) & ~i
    return (i | t) & ~(t << 1)


def sibling(i: int) -> int:
    return i ^ (((i + 1) & ~i) << 1)


def children(i: int) -> tuple[int, int] | None:
    """(left, right) children, or None for a leaf."""
    if not i & 1:
        return None
    d = depth(i)
    o = offset(i, d) * 2
    return index(d - 1, o), index(d - 1, o + 1)


def left_child(i: int) -> int | None:
    c = children(i)
    return None if c is None else c[0]


def right_child(i: int) -> int | None:
    c = children(i)
    return None if c is None else c[1]


def left_span(i: int) -> int:
    """The leftmost leaf under node i."""
    # A node at depth d spans 2**d - 1 indexes on either side of itself (t = 2**d).
    return i - ((i + 1) & ~i) + 1


def right_span(i: int) -> int:
    """The rightmost leaf under node i."""
    return i + ((i + 1) & ~i) - 1


def spans(i: int) -> tuple[int, int]:
    return left_span(i), right_span(i)


def count(i: int) -> int:
    """How many nodes (leaves and parents) the subtree at i holds."""
    return (2 << depth(i)) - 1


def contains(i: int, other: int) -> bool:
    """Whether node `other` lies in the subtree rooted at i (i itself included)."""
    return -((i + 1) & ~i) < other - i < ((i + 1) & ~i)


def full_roots(head: int) -> list[int]:
    """The roots, left to right, of a tree whose head is `head` (= 2 * length, even)."""
    if head & 1:
        raise ValueError(f"full_roots needs an even index (2 * length), got {head}")
    roots = []
    remaining = head >> 1
    start = 0
    while remaining:
        factor = 1 << (remaining.bit_length() - 1)  # largest power of two that fits
        roots.append(start + factor - 1)
        start += 2 * factor
        remaining -= factor
    return roots
