"""Building and checking the proofs of Hypercore 11's `data` messages (section 7.4).

Sans-IO: both directions take the tree as a `get_node(index) -> TreeNode | None` lookup.
Generation follows Node's `generateProof` (lib/merkle-tree.js) node for node, because
Node's verifier consumes the lists in exactly that order. Verification takes every node
by its flat index: roots of the new length are rebuilt from the reader's trusted roots, the
supplied nodes and the block's path, and the result must carry a valid signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b

from . import flat_tree
from .errors import INVALID_REQUEST, NOT_AVAILABLE, ProofUnavailable, VerificationError
from .keys import Manifest, decode_manifest, manifest_hash
from .merkle import PARENT_PREFIX as _PARENT
from .merkle import leaf_node, parent_node, tree_hash, verify_tree
from .types import BlockProof, HashProof, Proof, ProofRequest, TreeNode, UpgradeProof

GetNode = Callable[[int], "TreeNode | None"]

# A path in a flat tree of 2**64 leaves has at most 64 levels; a proof naming more nodes
# than that per list is malformed (Node's own loops assert at 1024).
MAX_PROOF_DEPTH = 64
MAX_PROOF_NODES = 4 * MAX_PROOF_DEPTH


# --- generation (writer side, or any peer holding the nodes) ---------------------------


def generate_proof(
    req: ProofRequest,
    *,
    length: int,
    fork: int,
    signature: bytes,
    get_node: GetNode,
    get_block: Callable[[int], bytes | None],
    manifest: bytes | None = None,
) -> Proof:
    """The proof answering `req` for a tree of `length` blocks signed by `signature`.

    Raises ProofUnavailable(NOT_AVAILABLE) when we lack a block or node, or the request is
    for another fork; ProofUnavailable(INVALID_REQUEST) when it can never be answered.
    `manifest` is attached when asked for (pass None for compat cores).
    """
    if req.fork != fork:
        raise ProofUnavailable(NOT_AVAILABLE, f"request for fork {req.fork}, we are at {fork}")
    if req.seek is not None:
        raise ProofUnavailable(INVALID_REQUEST, "seek requests are not supported")
    if req.block is not None and req.hash is not None:
        raise ProofUnavailable(INVALID_REQUEST, "a request asks for a block or a hash, not both")
    attach = manifest if req.manifest else None

    value = None
    if req.block is not None:
        if req.block.index >= length or (value := get_block(req.block.index)) is None:
            if attach is not None:
                return Proof(fork=fork, manifest=attach)  # as Node: still answer the manifest
            raise ProofUnavailable(NOT_AVAILABLE, f"block {req.block.index} is not held here")
    if req.block is None and req.hash is None and req.upgrade is None:
        return Proof(fork=fork, manifest=attach)

    def get(index: int) -> TreeNode:
        node = get_node(index)
        if node is None:
            raise ProofUnavailable(NOT_AVAILABLE, f"tree node {index} is not held here")
        return node

    head = 2 * length
    upgrade = req.upgrade
    start = 2 * upgrade.start if upgrade else 0
    to = start + 2 * upgrade.length if upgrade else head
    if upgrade and (start >= to or to > head):
        raise ProofUnavailable(
            INVALID_REQUEST,
            f"upgrade {upgrade.start}+{upgrade.length} does not fit our length {length}",
        )

    # The block (leaf 2i) or hash node the request names, as Node's normalizeIndexed.
    if req.block is not None:
        target, depth, has_value = 2 * req.block.index, req.block.nodes, True
        last_block = req.block.index
    elif req.hash is not None:
        target, depth, has_value = req.hash.index, req.hash.nodes, False
        last_block = flat_tree.right_span(req.hash.index) // 2
        if flat_tree.right_span(target) >= head:
            raise ProofUnavailable(INVALID_REQUEST, f"node {target} is beyond our length")
    else:
        target = None

    def path(from_index: int, root: int) -> list[TreeNode]:
        # Siblings from the node up to (not including) root, bottom-up; a hash proof also
        # carries the node itself first (blockAndSeekProof).
        nodes = [] if has_value else [get(from_index)]
        index = from_index
        for _ in range(MAX_PROOF_DEPTH + 1):
            if index == root:
                return nodes
            nodes.append(get(flat_tree.sibling(index)))
            index = flat_tree.parent(index)
        raise ProofUnavailable(INVALID_REQUEST, f"node {root} is not above node {from_index}")

    block_nodes: list[TreeNode] | None = None
    sub_tree = head
    if target is not None and (upgrade is None or last_block < upgrade.start):
        sub_tree = target
        for _ in range(depth):
            sub_tree = flat_tree.parent(sub_tree)
            if flat_tree.contains(sub_tree, to):
                raise ProofUnavailable(INVALID_REQUEST, "requested nodes reach past the length")
        block_nodes = path(target, sub_tree)
    elif target is not None:
        sub_tree = target

    upgrade_nodes: list[TreeNode] = []
    additional: list[TreeNode] = []
    if upgrade is not None:
        for root in flat_tree.full_roots(to):
            if flat_tree.right_span(root) + 1 < start:
                continue  # the reader has this root already
            if start > 0 and flat_tree.contains(root, start - 2):
                # Connect the reader's last root: siblings right of its last leaf, bottom-up.
                index = start - 2
                while index != root:
                    sib = flat_tree.sibling(index)
                    if sib > start - 2:
                        if block_nodes is None and target is not None and flat_tree.contains(sib, sub_tree):
                            block_nodes = path(target, sib)
                        else:
                            upgrade_nodes.append(get(sib))
                    index = flat_tree.parent(index)
                continue
            if block_nodes is None and target is not None and flat_tree.contains(root, sub_tree):
                # The verifier derives this root from the block's path instead.
                block_nodes = path(target, root)
                continue
            upgrade_nodes.append(get(root))
        if head > to:
            additional = _additional_nodes(to, head, get)
    if target is not None and block_nodes is None:
        # The named block or node lies outside the upgraded tree (Node: "Invalid block request").
        raise ProofUnavailable(INVALID_REQUEST, "the requested block is not inside the upgrade")

    return Proof(
        fork=fork,
        block=BlockProof(req.block.index, value, block_nodes or []) if req.block and value is not None else None,
        hash=HashProof(req.hash.index, block_nodes or []) if req.hash else None,
        upgrade=(
            UpgradeProof(upgrade.start, upgrade.length, upgrade_nodes, additional, signature) if upgrade else None
        ),
        manifest=attach,
    )


def _additional_nodes(start: int, head: int, get: Callable[[int], TreeNode]) -> list[TreeNode]:
    """Nodes that extend a tree ending at leaf start-2 to the signed head (additionalUpgradeProof)."""
    nodes: list[TreeNode] = []
    for root in flat_tree.full_roots(head):
        if flat_tree.right_span(root) + 1 < start:
            continue
        if flat_tree.contains(root, start - 2):
            index = start - 2
            while index != root:
                sib = flat_tree.sibling(index)
                if sib > start - 2:
                    nodes.append(get(sib))
                index = flat_tree.parent(index)
            continue
        nodes.append(get(root))
    return nodes


# --- verification (reader side) ---------------------------------------------------------


@dataclass
class Verified:
    """What a checked proof lets the reader store. `length`/`roots`/`signature` describe the
    signed head when the proof carried an upgrade (`upgraded`), else the reader's own."""

    upgraded: bool
    length: int
    fork: int
    roots: list[TreeNode]
    signature: bytes | None
    nodes: list[TreeNode] = field(default_factory=list)
    block: tuple[int, bytes] | None = None
    manifest: bytes | None = None  # a newly received manifest (hash already checked)
    trusted: int = -1  # a node in `nodes` found equal to the reader's stored one (no need to store it)


def verify_proof(
    proof: Proof,
    *,
    key: bytes,
    manifest: Manifest | None,
    length: int,
    fork: int,
    get_node: GetNode,
) -> Verified:
    """Check `proof` against what the reader trusts; raise VerificationError if it fails.

    `manifest` is the reader's decoded manifest (None if it has none and so assumes a
    compat core); `length`/`fork` are the reader's head; `get_node` returns stored nodes,
    all of which the reader has verified before.
    """
    new_manifest = None
    if proof.manifest is not None:
        if manifest_hash(proof.manifest) != key:
            raise VerificationError("the manifest does not hash to the core key")
        try:
            manifest = decode_manifest(proof.manifest)
        except ValueError as error:
            raise VerificationError(f"bad manifest: {error}") from None
        new_manifest = bytes(proof.manifest)
    if proof.seek is not None:
        raise VerificationError("seek proofs are not supported")
    if proof.block is not None and proof.hash is not None:
        raise VerificationError("a proof carries a block or a hash, not both")

    nodes: list[TreeNode] = []
    sub_root = _verify_path(proof, nodes)
    block = (proof.block.index, bytes(proof.block.value)) if proof.block is not None else None

    if proof.upgrade is None:
        if sub_root is not None:
            if proof.fork != fork:
                raise VerificationError(f"proof is for fork {proof.fork}, we are at fork {fork}")
            _check_stored(sub_root, length, get_node)
        checked = sub_root.index if sub_root is not None else -1
        return Verified(False, length, fork, [], None, nodes, block, new_manifest, checked)

    up = proof.upgrade
    if length > 0 and proof.fork != fork:
        raise VerificationError(f"proof is for fork {proof.fork}, we are at fork {fork} (reorgs unsupported)")
    if up.length < 1:
        raise VerificationError("an upgrade must add at least one block")
    if up.start > length:
        raise VerificationError(f"upgrade starts at {up.start}, we hold {length}")
    if len(up.nodes) + len(up.additional_nodes) > MAX_PROOF_NODES:
        raise VerificationError("too many nodes in the upgrade")

    trusted: dict[int, TreeNode] = {}
    for index in flat_tree.full_roots(2 * up.start):
        node = get_node(index)
        if node is None:
            raise VerificationError(f"we lack our own root {index} for length {up.start}")
        trusted[index] = node
    supplied: dict[int, TreeNode] = {}
    for node in (*up.nodes, *up.additional_nodes):
        node = _checked_node(node)
        if node.index in supplied:
            raise VerificationError(f"node {node.index} appears twice in the proof")
        supplied[node.index] = node

    new_length = up.start + up.length
    if up.additional_nodes:
        new_length = flat_tree.right_span(up.additional_nodes[-1].index) // 2 + 1
        if new_length <= up.start + up.length:
            raise VerificationError("additional nodes do not extend the upgrade")

    sources = [*trusted, *supplied] + ([sub_root.index] if sub_root else [])
    used: set[int] = set()
    computed: dict[int, TreeNode] = {}
    consumed = False

    def resolve(index: int, depth: int) -> TreeNode:
        nonlocal consumed
        if sub_root is not None and index == sub_root.index:
            consumed = True
            return sub_root
        if index in trusted:
            return trusted[index]
        if index in supplied:
            used.add(index)
            return supplied[index]
        kids = flat_tree.children(index)
        if kids is None or depth > MAX_PROOF_DEPTH or not any(flat_tree.contains(index, s) for s in sources):
            raise VerificationError(f"the proof lacks node {index}")
        node = parent_node(index, resolve(kids[0], depth + 1), resolve(kids[1], depth + 1))
        computed[index] = node
        return node

    roots = [resolve(r, 0) for r in flat_tree.full_roots(2 * new_length)]
    if used != set(supplied):
        extra = sorted(set(supplied) - used)
        raise VerificationError(f"the proof carries nodes {extra} that the tree does not use")
    if not verify_tree(key, manifest, tree_hash(roots), new_length, proof.fork, up.signature):
        raise VerificationError(f"invalid signature for length {new_length}")
    if sub_root is not None and not consumed:
        _check_stored(sub_root, length, get_node)

    nodes += [supplied[i] for i in sorted(used)] + list(computed.values())
    return Verified(True, new_length, proof.fork, roots, bytes(up.signature), nodes, block, new_manifest)


def _checked_node(node: TreeNode) -> TreeNode:
    if node.index < 0 or node.size < 0 or len(node.hash) != 32:
        raise VerificationError(f"malformed tree node {node.index}")
    return TreeNode(node.index, node.size, bytes(node.hash))


def _verify_path(proof: Proof, out: list[TreeNode]) -> TreeNode | None:
    """Hash the block (or take the hash node) up its sibling path; returns the subtree root
    it implies, which still has to match something trusted. Collects the nodes in `out`."""
    if proof.block is not None:
        node = leaf_node(proof.block.index, proof.block.value)
        siblings = proof.block.nodes
    elif proof.hash is not None:
        if not proof.hash.nodes or proof.hash.nodes[0].index != proof.hash.index:
            raise VerificationError(f"a hash proof must start with node {proof.hash.index}")
        node = _checked_node(proof.hash.nodes[0])
        siblings = proof.hash.nodes[1:]
    else:
        return None
    if len(siblings) > MAX_PROOF_DEPTH:
        raise VerificationError("block proof path is too long")
    out.append(node)
    # One level per sibling, the flat-tree and hashing calls inlined (a download runs this once
    # per block): t = 2**depth of the current node; its sibling is index ^ 2t, its parent
    # (index | t) & ~2t; the parent hashes the children left to right.
    index, size, digest = node
    for sib in siblings:
        sib_index, sib_size, sib_hash = sib
        t = (index + 1) & ~index
        if sib_index != index ^ (t << 1):
            raise VerificationError(f"expected node {index ^ (t << 1)}, got node {sib_index}")
        if sib_size < 0 or len(sib_hash) != 32:
            raise VerificationError(f"malformed tree node {sib_index}")
        if type(sib_hash) is not bytes:
            sib_hash = bytes(sib_hash)
            sib = TreeNode(sib_index, sib_size, sib_hash)
        pair = digest + sib_hash if index < sib_index else sib_hash + digest
        size += sib_size
        index = (index | t) & ~(t << 1)
        digest = blake2b(_PARENT + size.to_bytes(8, "little") + pair, digest_size=32).digest()
        node = TreeNode(index, size, digest)
        out += (sib, node)
    return node


def _check_stored(node: TreeNode, length: int, get_node: GetNode) -> None:
    if flat_tree.right_span(node.index) >= 2 * length:
        raise VerificationError(f"node {node.index} is beyond our length {length}")
    trusted = get_node(node.index)
    if trusted is None:
        raise VerificationError(f"we hold no node {node.index} to check the proof against")
    if trusted.hash != node.hash or trusted.size != node.size:
        raise VerificationError(f"checksum mismatch at node {node.index}")
