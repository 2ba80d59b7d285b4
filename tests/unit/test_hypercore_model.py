"""Properties of the tree math, the key encodings, and replication between cores:
random histories of appends, upgrades and block fetches keep every reader verified."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperpi.hypercore import NOT_AVAILABLE, Core, ProofUnavailable, Store, flat_tree
from hyperpi.hypercore.keys import (
    decode_manifest,
    default_manifest,
    encode_manifest,
    generate_keypair,
    parse_key,
    qr_payload,
    z32_decode,
    z32_encode,
)
from hyperpi.hypercore.merkle import append_leaves, leaf_node, parent_node
from hyperpi.hypercore.types import BlockRequest, ProofRequest, UpgradeRequest

indexes = st.integers(min_value=0, max_value=2**40)


@given(indexes)
def test_flat_tree_relations(i):
    assert flat_tree.index(flat_tree.depth(i), flat_tree.offset(i)) == i
    assert flat_tree.sibling(flat_tree.sibling(i)) == i
    assert flat_tree.parent(flat_tree.sibling(i)) == flat_tree.parent(i)
    assert i in flat_tree.children(flat_tree.parent(i))
    left, right = flat_tree.spans(i)
    assert left <= i <= right and left % 2 == 0 and right % 2 == 0
    assert (right - left) // 2 + 1 == 2 ** flat_tree.depth(i)
    assert flat_tree.contains(flat_tree.parent(i), i)


@given(st.integers(min_value=0, max_value=10**6))
def test_full_roots_cover_the_log(length):
    roots = flat_tree.full_roots(2 * length)
    covered = 0
    for r in roots:
        left, right = flat_tree.spans(r)
        assert left == 2 * covered
        covered = right // 2 + 1
    assert covered == length
    assert len(roots) == bin(length).count("1")


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=70), st.data())
def test_incremental_append_equals_rebuilding(blocks, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(blocks)))
    roots, _ = append_leaves([], 0, blocks[:cut])
    roots, _ = append_leaves(roots, cut, blocks[cut:])

    # Rebuild each root from its leaves, the slow obvious way.
    def build(i):
        kids = flat_tree.children(i)
        if kids is None:
            return leaf_node(i // 2, blocks[i // 2])
        return parent_node(i, build(kids[0]), build(kids[1]))

    assert roots == [build(r) for r in flat_tree.full_roots(2 * len(blocks))]


@given(st.binary(min_size=32, max_size=32))
def test_key_text_forms_round_trip(key):
    text = z32_encode(key)
    assert len(text) == 52 and z32_decode(text) == key
    assert parse_key(text) == key
    assert parse_key(key.hex()) == key and parse_key(key.hex().upper()) == key
    assert parse_key(qr_payload(key)) == key and parse_key(qr_payload(key).lower()) == key
    assert set(qr_payload(key)) <= set("HYPERPI:ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


@pytest.mark.parametrize("text", ["", "hello", "0" * 63, "g" * 64, "HYPERPI:!!!", "HYPERPI:AAAA", "l" * 52, "y" * 51])
def test_bad_key_text_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_key(text)


@given(st.binary(min_size=32, max_size=32))
def test_manifest_round_trip(public_key):
    m = default_manifest(public_key)
    assert decode_manifest(encode_manifest(m)) == m


@given(st.binary(max_size=80))
def test_manifest_decoder_never_crashes(data):
    try:
        decode_manifest(data)
    except ValueError:
        pass


# A history is a list of steps: ("append", n) | ("upgrade", with_block) | ("fetch", pick) | ("relay", pick)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(min_value=1, max_value=9)),
        st.tuples(st.just("upgrade"), st.booleans()),
        st.tuples(st.just("fetch"), st.integers(min_value=0, max_value=10**6)),
        st.tuples(st.just("relay"), st.integers(min_value=0, max_value=10**6)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.booleans())
def test_readers_stay_verified_through_random_histories(history, compat):
    with (
        tempfile.TemporaryDirectory() as tmp,
        Store(f"{tmp}/w") as ws,
        Store(f"{tmp}/r") as rs,
        Store(f"{tmp}/r2") as r2s,
    ):
        writer = Core.create(ws, generate_keypair(bytes(32)), compat=compat)
        reader = Core.open(rs, writer.key)
        relay = Core.open(r2s, writer.key)  # syncs only from `reader`
        unavailable: list[str] = []
        for op, arg in history:
            if op == "append":
                start = writer.length
                writer.append([b"block %d" % i for i in range(start, start + arg)])
            elif op == "upgrade" and writer.length > reader.length:
                block = None
                if arg:
                    i = writer.length - 1
                    block = BlockRequest(i, 0)
                reader.verify_and_apply(
                    writer.proof(
                        ProofRequest(
                            fork=0,
                            block=block,
                            upgrade=UpgradeRequest(reader.length, writer.length - reader.length),
                            manifest=reader.manifest is None,
                        )
                    )
                )
                assert reader.length == writer.length and reader.signature == writer.signature
            elif op in ("fetch", "relay"):
                source, target = (writer, reader) if op == "fetch" else (reader, relay)
                if source.length == 0:
                    continue
                try:
                    if target.length < source.length:
                        up = UpgradeRequest(target.length, source.length - target.length)
                        target.verify_and_apply(
                            source.proof(ProofRequest(fork=0, upgrade=up, manifest=target.manifest is None))
                        )
                    i = arg % target.length
                    if not source.has(i) or target.has(i):
                        continue
                    req = ProofRequest(fork=0, block=BlockRequest(i, target.missing_nodes(i)))
                    target.verify_and_apply(source.proof(req))
                except ProofUnavailable as error:
                    # A sparse reader may lack the nodes a proof needs; it must say so, never lie.
                    assert op == "relay" and error.reason == NOT_AVAILABLE
                    unavailable.append(op)
                    continue
                assert target.get(i) == writer.get(i)
        for core in (reader, relay):
            core.audit()
            if core.length == writer.length:
                assert core.roots == writer.roots and core.signature == writer.signature
            assert all(core.get(i) == writer.get(i) for i in range(core.length) if core.has(i))
