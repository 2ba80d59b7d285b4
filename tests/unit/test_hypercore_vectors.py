"""Recompute every key, manifest, tree, signature and proof vector that real Node
hypercore 11 produced (tests/fixtures/vectors.json), and reject tampered proofs."""

from __future__ import annotations

import dataclasses

import pytest

from hyperpi.hypercore import Core, Store, VerificationError, flat_tree
from hyperpi.hypercore.keys import (
    DEFAULT_ENCRYPTION,
    DEFAULT_NAMESPACE,
    MANIFEST,
    REPLICATE_INITIATOR,
    REPLICATE_RESPONDER,
    TREE,
    core_key,
    decode_manifest,
    default_manifest,
    discovery_key,
    encode_manifest,
    generate_keypair,
    manifest_hash,
)
from hyperpi.hypercore.merkle import (
    decode_multisig,
    leaf_hash,
    signable,
    signable_compat,
    verify_tree,
)
from hyperpi.hypercore.proofs import verify_proof
from hyperpi.hypercore.types import (
    BlockProof,
    BlockRequest,
    HashRequest,
    Proof,
    ProofRequest,
    TreeNode,
    UpgradeProof,
    UpgradeRequest,
)

MODES = ["tree_default", "tree_compat"]
PROOF_MODES = {"tree_default": "proofs_default_length8", "tree_compat": "proofs_compat_length8"}

# What the reader holds in each of the 9 proof cases: (its length, tree nodes it stores).
READER_STATE = [
    (0, []),
    (0, []),
    (8, [7]),
    (8, [7, 11]),
    (8, [7, 12]),
    (5, [3, 8]),
    (0, []),
    (5, [3, 8]),
    (0, []),
]


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def node(j: dict) -> TreeNode:
    return TreeNode(j["index"], j["size"], h(j["hash"]))


def request_from_json(j: dict) -> ProofRequest:
    return ProofRequest(
        fork=j["fork"],
        block=BlockRequest(**j["block"]) if j["block"] else None,
        hash=HashRequest(**j["hash"]) if j["hash"] else None,
        upgrade=UpgradeRequest(**j["upgrade"]) if j["upgrade"] else None,
        manifest=j["manifest"],
    )


def proof_from_json(j: dict) -> Proof:
    b, u = j["block"], j["upgrade"]
    return Proof(
        fork=j["fork"],
        block=BlockProof(b["index"], h(b["value_hex"]), [node(n) for n in b["nodes"]]) if b else None,
        upgrade=(
            UpgradeProof(
                u["start"],
                u["length"],
                [node(n) for n in u["nodes"]],
                [node(n) for n in u["additionalNodes"]],
                h(u["signature"]),
            )
            if u
            else None
        ),
        manifest=h(j["manifest"]) if j["manifest"] else None,
    )


def test_namespaces(vectors):
    c = vectors["constants"]["hypercore"]
    assert [TREE, REPLICATE_INITIATOR, REPLICATE_RESPONDER, MANIFEST, DEFAULT_NAMESPACE, DEFAULT_ENCRYPTION] == [
        h(c[k])
        for k in (
            "TREE",
            "REPLICATE_INITIATOR",
            "REPLICATE_RESPONDER",
            "MANIFEST",
            "DEFAULT_NAMESPACE",
            "DEFAULT_ENCRYPTION",
        )
    ]


def test_keys_manifests_and_discovery_keys(vectors):
    for k in vectors["keys"]:
        kp = generate_keypair(h(k["seed"]))
        assert kp.public_key.hex() == k["ed25519_public_key"], k["label"]
        assert kp.secret_key.hex() == k["ed25519_secret_key_libsodium"]
        m = default_manifest(kp.public_key)
        encoded = encode_manifest(m)
        assert encoded.hex() == k["default_manifest"]["encoded"]
        assert len(encoded) == 70
        assert decode_manifest(encoded) == m
        assert (MANIFEST + encoded).hex() == k["default_manifest"]["hash_input"]
        assert manifest_hash(encoded).hex() == k["default_manifest"]["hash"]
        assert core_key(kp.public_key).hex() == k["default_core_key"]
        assert core_key(kp.public_key, compat=True).hex() == k["compat_core_key"]
        assert discovery_key(h(k["default_core_key"])).hex() == k["default_discovery_key"]
        assert discovery_key(h(k["compat_core_key"])).hex() == k["compat_discovery_key"]


@pytest.mark.parametrize("mode", MODES)
def test_tree_states_recomputed_by_a_writer(vectors, mode, tmp_path):
    t = vectors[mode]
    compat = t["compat_flag"]
    kp = generate_keypair(h(t["writer_seed"]))
    assert kp.public_key.hex() == t["public_key"]
    blocks = [h(b["hex"]) for b in t["blocks"]]
    for b in t["blocks"]:
        assert leaf_hash(h(b["hex"])).hex() == b["leaf_hash"]
    with Store(tmp_path) as store:
        core = Core.create(store, kp, compat=compat)
        assert core.key.hex() == t["key"]
        assert core.discovery_key.hex() == t["discovery_key"]
        assert core.manifest.hex() == t["manifest_encoded"]
        assert core.compat is compat
        assert core.has_manifest is (not compat)
        for state in t["states"]:
            step = state["appended_in_this_step"]
            assert core.append(blocks[core.length : core.length + step]) == state["length"]
            assert core.byte_length == state["byteLength"]
            for n in state["nodes"]:
                assert core._node(n["index"]) == node(n)
            assert [r.index for r in core.roots] == state["root_indexes"]
            assert core.roots == [node(r) for r in state["roots"]]
            assert flat_tree.full_roots(2 * state["length"]) == state["root_indexes"]
            th = core.tree_hash()
            assert th.hex() == state["tree_hash"]
            if compat:
                sb = signable_compat(th, state["length"], state["fork"])
                assert len(sb) == 80
            else:
                sb = signable(core.key, th, state["length"], state["fork"])
                assert len(sb) == 112
                [(signer, sig, patch)] = decode_multisig(core.signature)
                assert (signer, patch) == (0, 0)
                assert sig.hex() == state["multisig_decoded"]["proofs"][0]["signature"]
            assert sb.hex() == state["signable"]
            # Ed25519 is deterministic: byte-equal signatures to Node's.
            assert core.signature.hex() == state["signature"]
            manifest = decode_manifest(core.manifest)
            assert verify_tree(core.key, manifest, th, state["length"], state["fork"], h(state["signature"]))
            bad = bytearray(h(state["signature"]))
            bad[-5 if not compat else 10] ^= 1
            assert not verify_tree(core.key, manifest, th, state["length"], state["fork"], bytes(bad))
            assert not verify_tree(core.key, manifest, th, state["length"] + 1, state["fork"], h(state["signature"]))


def _writer(vectors, mode, path):
    t = vectors[mode]
    store = Store(path)
    core = Core.create(store, generate_keypair(h(t["writer_seed"])), compat=t["compat_flag"])
    core.append([h(b["hex"]) for b in t["blocks"]])
    return store, core


def _reader_view(writer: Core, case: int):
    length, held = READER_STATE[case]
    stored = {i: writer._node(i) for i in held}
    manifest = None if writer.compat else decode_manifest(writer.manifest)
    return dict(key=writer.key, manifest=manifest, length=length, fork=0, get_node=stored.get)


@pytest.mark.parametrize("mode", MODES)
def test_proof_generation_matches_node(vectors, mode, tmp_path):
    store, core = _writer(vectors, mode, tmp_path)
    with store:
        cases = vectors[PROOF_MODES[mode]]
        assert len(cases) == 9
        for case in cases:
            ours = core.proof(request_from_json(case["request"]))
            assert ours == proof_from_json(case["proof"]), case["name"]


@pytest.mark.parametrize("mode", MODES)
def test_node_proofs_verify(vectors, mode, tmp_path):
    store, writer = _writer(vectors, mode, tmp_path)
    with store:
        for i, case in enumerate(vectors[PROOF_MODES[mode]]):
            proof = proof_from_json(case["proof"])
            v = verify_proof(proof, **_reader_view(writer, i))
            if proof.upgrade:
                assert v.upgraded and v.length == 8
                assert v.roots == writer.roots
            if proof.block:
                assert v.block == (proof.block.index, proof.block.value)
            for n in v.nodes:  # everything the reader would store is the writer's own node
                assert writer._node(n.index) == n, case["name"]


def _tampered(proof: Proof) -> list[tuple[str, Proof]]:
    out = []
    if proof.block:
        value = bytearray(proof.block.value)
        value[0] ^= 1
        out.append(("block", dataclasses.replace(proof, block=dataclasses.replace(proof.block, value=bytes(value)))))
        if proof.block.nodes:
            nodes = list(proof.block.nodes)
            nodes[0] = nodes[0]._replace(hash=bytes(32))
            out.append(("block node", dataclasses.replace(proof, block=dataclasses.replace(proof.block, nodes=nodes))))
    if proof.upgrade:
        u = proof.upgrade
        sig = bytearray(u.signature)
        sig[len(sig) // 2] ^= 0x40
        out.append(("signature", dataclasses.replace(proof, upgrade=dataclasses.replace(u, signature=bytes(sig)))))
        for field in ("nodes", "additional_nodes"):
            nodes = list(getattr(u, field))
            if nodes:
                nodes[-1] = nodes[-1]._replace(size=nodes[-1].size + 1)
                out.append((field, dataclasses.replace(proof, upgrade=dataclasses.replace(u, **{field: nodes}))))
        out.append(("fork", dataclasses.replace(proof, fork=1)))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_tampered_proofs_are_rejected(vectors, mode, tmp_path):
    store, writer = _writer(vectors, mode, tmp_path)
    checked = set()
    with store:
        for i, case in enumerate(vectors[PROOF_MODES[mode]]):
            for what, bad in _tampered(proof_from_json(case["proof"])):
                with pytest.raises(VerificationError):
                    verify_proof(bad, **_reader_view(writer, i))
                checked.add(what)
    assert checked >= {"block", "block node", "signature", "nodes", "additional_nodes"}


def test_wrong_order_of_block_nodes_is_rejected(vectors, tmp_path):
    store, writer = _writer(vectors, "tree_default", tmp_path)
    with store:
        proof = proof_from_json(vectors["proofs_default_length8"][2]["proof"])
        swapped = dataclasses.replace(proof, block=dataclasses.replace(proof.block, nodes=proof.block.nodes[::-1]))
        with pytest.raises(VerificationError, match="expected node"):
            verify_proof(swapped, **_reader_view(writer, 2))


def test_a_reader_core_applies_node_proofs(vectors, tmp_path):
    """Core.verify_and_apply with a default core: manifest, upgrade, then blocks."""
    t = vectors["tree_default"]
    store, writer = _writer(vectors, "tree_default", tmp_path / "w")
    with store, Store(tmp_path / "r") as rstore:
        reader = Core.open(rstore, h(t["key"]))
        assert not reader.writable and reader.length == 0 and reader.manifest is None
        events = []
        reader.subscribe(events.append)
        first = writer.proof(ProofRequest(fork=0, upgrade=UpgradeRequest(0, 8), manifest=True))
        assert first.manifest == writer.manifest
        reader.verify_and_apply(first)
        assert (reader.length, reader.has_manifest, reader.signature) == (8, True, writer.signature)
        assert [e.kind for e in events] == ["upgrade"]
        for i in (0, 5, 6, 3):
            n = reader.missing_nodes(i)
            reader.verify_and_apply(writer.proof(ProofRequest(fork=0, block=BlockRequest(i, n))))
            assert reader.get(i) == writer.get(i)
        assert reader.missing_nodes(0) == 0
        assert [e.index for e in events if e.kind == "block"] == [0, 5, 6, 3]
        reader.audit()
