"""hyperpi and real Node hypercore 11 append the same blocks from the same seed: keys,
roots, tree hashes and signatures must be identical after every append."""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.keys import generate_keypair, z32_encode

BATCHES = [1, 2, 3, 7, 16, 1, 33, 64, 1]  # odd and power-of-two lengths, 128 blocks in all


def blocks(rng: random.Random) -> list[list[bytes]]:
    out, n = [], 0
    for size in BATCHES:
        batch = []
        for _ in range(size):
            text = "".join(rng.choice("abcdefgh äöü €") for _ in range(rng.randrange(0, 300)))
            batch.append(json.dumps({"type": "chat", "text": text, "time": 1700000000000 + n, "nick": "x"}).encode())
            n += 1
        out.append(batch)
    out[4][3] = b""  # an empty block is legal in both
    out[6][0] = bytes(rng.randrange(256) for _ in range(70_000))  # and a large binary one
    return out


@pytest.mark.parametrize("compat", [False, True], ids=["default", "compat"])
def test_same_seed_same_core_as_node(node_peers, tmp_path, compat):
    rng = random.Random(7 if compat else 11)
    seed = bytes(rng.randrange(256) for _ in range(32))
    batches = blocks(rng)
    request = {"seed": seed.hex(), "compat": compat, "batches": [[b.hex() for b in batch] for batch in batches]}
    done = subprocess.run(
        ["node", "core-crosscheck.js", str(tmp_path / "node")],
        cwd=node_peers,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    node = json.loads(done.stdout)

    with Store(tmp_path / "py") as store:
        core = Core.create(store, generate_keypair(seed), compat=compat)
        assert core.key.hex() == node["key"]
        assert core.discovery_key.hex() == node["discoveryKey"]
        assert core.public_key.hex() == node["publicKey"]
        assert (core.key.hex() == node["publicKey"]) is compat
        assert len(node["states"]) == len(batches)
        for batch, state in zip(batches, node["states"], strict=True):
            assert core.append(batch) == state["length"]
            assert core.byte_length == state["byteLength"]
            assert [(r.index, r.size, r.hash.hex()) for r in core.roots] == [
                (r["index"], r["size"], r["hash"]) for r in state["roots"]
            ]
            assert core.tree_hash().hex() == state["treeHash"]
            assert core.signature.hex() == state["signature"]
            assert len(core.signature) == (64 if compat else 68)
        core.audit()
        assert len(z32_encode(core.key)) == 52
