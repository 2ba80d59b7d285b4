"""Proof generation against real Node hypercore 11 beyond the 9 vectors: hundreds of random
block, hash and upgrade requests at many lengths must give node-for-node identical proofs,
and the requests Node refuses must be refused here too. Every proof must also verify."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from hyperpi.hypercore import Core, ProofUnavailable, Store
from hyperpi.hypercore.flat_tree import full_roots, right_span
from hyperpi.hypercore.keys import generate_keypair
from hyperpi.hypercore.proofs import verify_proof
from hyperpi.hypercore.types import (
    BlockProof,
    BlockRequest,
    HashProof,
    HashRequest,
    Proof,
    ProofRequest,
    TreeNode,
    UpgradeProof,
    UpgradeRequest,
)

APPENDS = [1, 1, 2, 3, 5, 8, 13, 21, 9]  # lengths 1 .. 63
REQUESTS_PER_STEP = 100


def random_requests(rng: random.Random, length: int) -> list[dict]:
    out = []
    for _ in range(REQUESTS_PER_STEP):
        r: dict = {"block": None, "hash": None, "upgrade": None}
        kind = rng.random()
        if kind < 0.45:
            r["block"] = {"index": rng.randrange(length + 1), "nodes": rng.randrange(7)}
        elif kind < 0.55:
            r["hash"] = {"index": rng.randrange(2 * length), "nodes": rng.randrange(4)}
        if kind > 0.35:
            start = rng.randrange(length + 1)
            r["upgrade"] = {"start": start, "length": rng.randrange(0, length - start + 2)}
        out.append(r)
    return out


def to_request(r: dict) -> ProofRequest:
    return ProofRequest(
        fork=0,
        block=BlockRequest(**r["block"]) if r["block"] else None,
        hash=HashRequest(**r["hash"]) if r["hash"] else None,
        upgrade=UpgradeRequest(**r["upgrade"]) if r["upgrade"] else None,
    )


def from_node(j: dict) -> Proof:
    def nodes(lst):
        return [TreeNode(n["index"], n["size"], bytes.fromhex(n["hash"])) for n in lst]

    b, hp, u = j["block"], j["hash"], j["upgrade"]
    return Proof(
        fork=j["fork"],
        block=BlockProof(b["index"], bytes.fromhex(b["value"]), nodes(b["nodes"])) if b else None,
        hash=HashProof(hp["index"], nodes(hp["nodes"])) if hp else None,
        upgrade=(
            UpgradeProof(
                u["start"], u["length"], nodes(u["nodes"]), nodes(u["additionalNodes"]), bytes.fromhex(u["signature"])
            )
            if u
            else None
        ),
    )


@pytest.mark.parametrize("compat", [False, True], ids=["default", "compat"])
def test_random_proofs_match_node(node_peers, tmp_path, compat):
    rng = random.Random(99 if compat else 42)
    seed = bytes(rng.randrange(256) for _ in range(32))
    steps, length, n = [], 0, 0
    for count in APPENDS:
        blocks = [b'{"n":%d,"pad":"%s"}' % (n + i, b"x" * rng.randrange(40)) for i in range(count)]
        n += count
        length += count
        steps.append({"append": blocks, "requests": random_requests(rng, length)})
    request = {
        "seed": seed.hex(),
        "compat": compat,
        "steps": [{"append": [b.hex() for b in s["append"]], "requests": s["requests"]} for s in steps],
    }
    done = subprocess.run(
        ["node", "core-proofs.js", str(tmp_path / "node")],
        cwd=node_peers,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)

    compared = refused = verified = 0
    with Store(tmp_path / "py") as store:
        core = Core.create(store, generate_keypair(seed), compat=compat)
        for step, node_results in zip(steps, answers, strict=True):
            core.append(step["append"])
            for r, theirs in zip(step["requests"], node_results, strict=True):
                try:
                    ours = core.proof(to_request(r))
                except ProofUnavailable:
                    assert "error" in theirs, f"Node answers {r} at length {core.length}, we refused"
                    refused += 1
                    continue
                assert "error" not in theirs, f"Node refuses {r} ({theirs['error']}) at length {core.length}"
                assert ours == from_node(theirs), f"{r} at length {core.length}"
                compared += 1
                if ours.upgrade is not None:
                    # A reader at the upgrade's start (holding the roots it had then) accepts it.
                    start = ours.upgrade.start
                    held = {i: core._node(i) for i in _roots(start)}
                    below = (ours.block and ours.block.index < start) or (
                        ours.hash and right_span(ours.hash.index) // 2 < start
                    )
                    if below:
                        continue  # that reader would need more of the tree than its roots
                    v = verify_proof(
                        ours, key=core.key, manifest=core._manifest, length=start, fork=0, get_node=held.get
                    )
                    assert v.upgraded and v.length == core.length and v.roots == core.roots
                    verified += 1
    assert compared > 300 and refused > 50 and verified > 100, (compared, refused, verified)


def _roots(length: int) -> list[int]:
    return full_roots(2 * length)
