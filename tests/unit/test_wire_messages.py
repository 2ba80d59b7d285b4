"""hypercore/alpha messages: Node's samples and the 18 proof messages byte for byte, the
capability, and round-trip properties of every message type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
)
from hyperpi.wire import messages as m
from hyperpi.wire.encoding import MAX_SAFE_UINT
from hyperpi.wire.errors import DecodeError, WireError

from .wire_json import from_json, proof, proof_request


def test_every_wire_message_vector(vectors: dict) -> None:
    seen = set()
    for v in vectors["wire_messages"]:
        msg = from_json(v["type"], v["value"])
        data = bytes.fromhex(v["encoded"])
        assert msg.encode() == data, v
        decoded = m.Handshake.decode(data) if v["type"] == "handshake" else m.decode_message(msg.TYPE, data)
        assert decoded == msg, v
        seen.add(v["type"])
    assert len(seen) == 10  # handshake + every type but data (covered by the proofs below)


@pytest.mark.parametrize("mode", ["proofs_default_length8", "proofs_compat_length8"])
def test_proof_vectors_map_to_shared_types(vectors: dict, mode: str) -> None:
    cases = vectors[mode]
    assert len(cases) == 9
    for case in cases:
        req = m.Request.decode(bytes.fromhex(case["request_encoded"]))
        assert req.proof_request == proof_request(case["request"]), case["name"]
        assert req.id == case["request"]["id"] and req.priority == case["request"]["priority"]
        assert req.encode().hex() == case["request_encoded"]

        data = m.Data.decode(bytes.fromhex(case["data_encoded"]))
        assert data.proof == proof(case["proof"]), case["name"]
        assert data.request_id == case["request"]["id"]
        assert m.Data(case["request"]["id"], proof(case["proof"])).encode().hex() == case["data_encoded"]


def test_capability_matches_the_transcript(vectors: dict) -> None:
    t = vectors["transcript"]
    hh = bytes.fromhex(t["session_keys"]["initiator"]["handshake_hash"])
    key = bytes.fromhex(t["writer"]["core_key"])
    frames = {d: t["analysis"][d]["frames"] for d in ("i2r", "r2i")}
    cap_i = next(f for f in frames["i2r"] if f.get("decoded", {}).get("control") == "open")
    cap_r = next(f for f in frames["r2i"] if f.get("decoded", {}).get("control") == "open")
    assert m.capability(hh, key, True).hex() == cap_i["decoded"]["handshake"]["capability"]
    assert m.capability(hh, key, False).hex() == cap_r["decoded"]["handshake"]["capability"]


def test_data_with_manifest_reads_exactly_the_manifest() -> None:
    manifest = bytes.fromhex("010000010100") + b"\x11" * 64
    p = Proof(fork=0, upgrade=UpgradeProof(0, 1, [TreeNode(0, 3, b"\x22" * 32)], [], b"\x33" * 68), manifest=manifest)
    data = m.Data(4, p).encode()
    assert m.Data.decode(data + b"trailing").proof.manifest == manifest
    with pytest.raises(DecodeError):
        m.Data.decode(data[:-1])


def test_no_data_accepts_a_message_ending_after_the_request() -> None:
    assert m.NoData.decode(b"\x07") == m.NoData(7, 0)


def test_unknown_type_is_ignored() -> None:
    assert m.decode_message(10, b"\x00") is None


# --- round-trip properties -------------------------------------------------------------------

uints = st.integers(min_value=0, max_value=MAX_SAFE_UINT)
small = st.integers(min_value=0, max_value=10**6)
h32 = st.binary(min_size=32, max_size=32)
nodes = st.lists(st.builds(TreeNode, small, small, h32), max_size=4)


def opt(s):
    return st.none() | s


proof_requests = st.builds(
    ProofRequest,
    uints,
    opt(st.builds(BlockRequest, uints, uints)),
    opt(st.builds(HashRequest, uints, uints)),
    opt(st.builds(SeekRequest, uints, uints)),
    opt(st.builds(UpgradeRequest, uints, uints)),
    st.booleans(),
)
manifests = st.builds(lambda pk: bytes.fromhex("010000010100") + bytes(32) + pk, h32)
proofs = st.builds(
    Proof,
    uints,
    opt(st.builds(BlockProof, uints, st.binary(max_size=100), nodes)),
    opt(st.builds(HashProof, uints, nodes)),
    opt(st.builds(SeekProof, uints, nodes)),
    opt(st.builds(UpgradeProof, uints, uints, nodes, nodes, st.binary(min_size=64, max_size=68) | st.just(b""))),
    opt(manifests),
)
any_message = st.one_of(
    st.builds(m.Sync, uints, uints, uints, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    st.builds(m.Request, uints, proof_requests, uints),
    st.builds(m.Cancel, uints),
    st.builds(m.Data, uints, proofs),
    st.builds(m.NoData, uints, uints),
    st.builds(m.Want, uints, uints, st.booleans()),
    st.builds(m.Unwant, uints, uints, st.booleans()),
    st.builds(m.Bitfield, uints, st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=8)),
    st.builds(m.Range, uints, uints, st.booleans()),
    st.builds(m.Extension, st.text(max_size=20), st.binary(max_size=50)),
)


@given(any_message)
def test_every_message_round_trips(msg) -> None:
    assert m.decode_message(msg.TYPE, msg.encode()) == msg


@given(h32, st.booleans())
def test_handshake_round_trips(cap: bytes, seeks: bool) -> None:
    hs = m.Handshake(cap, seeks)
    assert m.Handshake.decode(hs.encode()) == hs


@given(st.integers(min_value=0, max_value=12), st.binary(max_size=80))
def test_random_payloads_only_raise_wire_errors(type_: int, payload: bytes) -> None:
    try:
        m.decode_message(type_, payload)
    except WireError:
        pass
    try:
        m.Handshake.decode(payload)
    except WireError:
        pass


@given(any_message, st.data())
def test_truncated_messages_only_raise_wire_errors(msg, data) -> None:
    encoded = msg.encode()
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    try:
        m.decode_message(msg.TYPE, encoded[:cut])
    except WireError:
        pass
