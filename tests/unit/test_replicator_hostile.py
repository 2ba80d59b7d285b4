"""A hostile remote against the sans-IO `Replicator`, without sockets.

The remote is scripted from the wire layers (protomux + message codecs) and, where it plays a
writer, proves things with a real `Core` and then tampers with the proofs. Each case ends in
a `ReplicationError` (a `WireError`) with a one-line reason (a bad proof closes only its
core's channel, with a `FeedRefused` event), nothing invalid is stored
(`core.audit()` passes, length and contiguous length unchanged), and the replicator's
buffers stay within their named limits under floods.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.types import BlockProof, BlockRequest, Proof, ProofRequest, TreeNode, UpgradeRequest
from hyperpi.wire.errors import WireError
from hyperpi.wire.messages import (
    PROTOCOL,
    Bitfield,
    Data,
    Handshake,
    NoData,
    Range,
    Request,
    Sync,
    Want,
    capability,
    decode_message,
)
from hyperpi.wire.protomux import MAX_BATCH_MESSAGES, ChannelMessage, ChannelOpened, Protomux
from hyperpi.wire.replicator import (
    MAX_INFLIGHT,
    MAX_PARKED_BYTES,
    MAX_REMOTE_RANGES,
    MAX_REMOTE_REQUESTS,
    REPLY_BATCH,
    FeedRefused,
    ReplicationError,
    Replicator,
)

HANDSHAKE_HASH = bytes(range(64))  # stands in for the Noise handshake hash of one connection


class Remote:
    """The scripted peer: it opens the core's channel as the Noise initiator (the replicator
    under test is the responder) and speaks raw `hypercore/alpha` messages."""

    def __init__(self, core_key: bytes, discovery_key: bytes, *, cap: bytes | None = None) -> None:
        self.mux = Protomux()
        cap = capability(HANDSHAKE_HASH, core_key, True) if cap is None else cap
        self.channel = self.mux.open(PROTOCOL, discovery_key, Handshake(cap).encode())
        self.inbox: list[object] = []
        self.opened = False

    def send(self, message: object) -> None:
        self.mux.send(self.channel, message.TYPE, message.encode())  # type: ignore[attr-defined]

    def send_raw(self, type: int, payload: bytes) -> None:
        self.mux.send(self.channel, type, payload)

    def exchange(self, rep: Replicator) -> list[object]:
        """Deliver what we queued, collect what the replicator answers; the new messages."""
        for frame in self.mux.frames_to_send():
            rep.receive(frame)
        new: list[object] = []
        for frame in drain(rep):
            for event in self.mux.receive(frame):
                if isinstance(event, ChannelOpened):
                    self.opened = True
                elif isinstance(event, ChannelMessage):
                    new.append(decode_message(event.type, event.payload))
        self.inbox += new
        return new

    def requests(self, messages: list[object]) -> list[Request]:
        return [m for m in messages if isinstance(m, Request)]


def drain(rep: Replicator) -> list[bytes]:
    """Every frame the replicator has to send, as the adapter takes them (replication.py)."""
    frames = rep.frames_to_send()
    while rep.replies_pending:
        frames += rep.frames_to_send()
    return frames


def writer_core(tmp_path: Path, blocks: int) -> Core:
    core = Core.create(Store(tmp_path / "writer"))
    core.append([f"block {i}".encode() for i in range(blocks)])
    return core


def reader_setup(tmp_path: Path, blocks: int = 8) -> tuple[Core, Core, Replicator, Remote]:
    """A hyperpi reader of `writer`'s feed, and a scripted remote that holds the feed."""
    writer = writer_core(tmp_path, blocks)
    reader = Core.open(Store(tmp_path / "reader"), writer.key)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[reader])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    assert remote.opened
    return writer, reader, rep, remote


def announce(remote: Remote, writer: Core) -> None:
    remote.send(
        Sync(writer.fork, writer.length, 0, can_upgrade=True, uploading=True, downloading=True, has_manifest=True)
    )
    remote.send(Range(0, writer.length))


def assert_refused(rep: Replicator, remote: Remote, core: Core) -> None:
    """The bad proof closed the core's channel, reported once; the connection goes on."""
    refused = [e for e in rep.take_events() if isinstance(e, FeedRefused)]
    assert [e.core for e in refused] == [core] and "invalid proof" in refused[0].reason
    assert remote.channel.closed and core.discovery_key not in rep._by_key
    remote.send(Sync(0, 99, 0))  # a message for the closed channel is ignored, not an error
    remote.exchange(rep)
    assert not rep.take_events()


def assert_untouched(reader: Core, length: int = 0, contiguous: int = 0) -> None:
    assert (reader.length, reader.contiguous_length) == (length, contiguous)
    assert not any(reader.has(i) for i in range(contiguous, reader.length))
    reader.audit()


# --- capability --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["random", "other-role", "other-key", "other-connection"])
def test_a_wrong_capability_ends_the_connection(tmp_path: Path, which: str) -> None:
    writer = writer_core(tmp_path, 3)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    cap = {
        "random": b"\x55" * 32,
        "other-role": capability(HANDSHAKE_HASH, writer.key, False),  # the responder's, replayed
        "other-key": capability(HANDSHAKE_HASH, b"\x01" * 32, True),
        "other-connection": capability(b"\x02" * 64, writer.key, True),
    }[which]
    remote = Remote(writer.key, writer.discovery_key, cap=cap)
    with pytest.raises(ReplicationError, match="wrong capability"):
        remote.exchange(rep)
    assert not remote.inbox  # not one message about the core before the check passed


def test_an_open_for_a_core_we_do_not_share_is_rejected(tmp_path: Path) -> None:
    writer = writer_core(tmp_path, 1)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    stranger = Remote(b"\x09" * 32, b"\x0a" * 32)
    stranger.exchange(rep)
    assert not stranger.opened and not stranger.inbox
    assert [c.id for c in rep.mux.channels] == [writer.discovery_key]


# --- bad proofs --------------------------------------------------------------------------------


def flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def test_an_upgrade_with_a_bad_signature_stores_nothing(tmp_path: Path) -> None:
    writer, reader, rep, remote = reader_setup(tmp_path)
    announce(remote, writer)
    [req] = remote.requests(remote.exchange(rep))
    assert req.proof_request.upgrade is not None
    proof = writer.proof(req.proof_request)
    assert proof.upgrade is not None
    bad = dataclasses.replace(
        proof, upgrade=dataclasses.replace(proof.upgrade, signature=flip(proof.upgrade.signature))
    )
    remote.send(Data(req.id, bad))
    remote.exchange(rep)
    assert_refused(rep, remote, reader)
    assert_untouched(reader)
    assert reader.manifest is None  # not even the manifest that came with it


def tamper_block(proof: Proof, how: str) -> Proof:
    assert proof.block is not None
    block = proof.block
    if how == "value":
        block = dataclasses.replace(block, value=block.value + b"!")
    elif how == "node-hash":
        node = block.nodes[0]
        block = dataclasses.replace(block, nodes=[TreeNode(node.index, node.size, flip(node.hash)), *block.nodes[1:]])
    elif how == "node-size":
        node = block.nodes[0]
        block = dataclasses.replace(block, nodes=[TreeNode(node.index, node.size + 1, node.hash), *block.nodes[1:]])
    elif how == "missing-node":
        block = dataclasses.replace(block, nodes=block.nodes[:-1])
    elif how == "extra-node":
        block = dataclasses.replace(block, nodes=[*block.nodes, block.nodes[-1]])
    return dataclasses.replace(proof, block=block)


@pytest.mark.parametrize("how", ["value", "node-hash", "node-size", "missing-node", "extra-node"])
def test_a_tampered_block_proof_stores_nothing(tmp_path: Path, how: str) -> None:
    writer, reader, rep, remote = reader_setup(tmp_path)
    announce(remote, writer)
    [upgrade] = remote.requests(remote.exchange(rep))
    remote.send(Data(upgrade.id, writer.proof(upgrade.proof_request)))  # an honest upgrade
    blocks = remote.requests(remote.exchange(rep))
    assert reader.length == 8 and blocks, "the reader asks for the blocks once upgraded"
    tampered = 0
    for req in blocks:
        proof = writer.proof(req.proof_request)
        assert proof.block is not None
        if proof.block.nodes or how == "value":  # (proofs relying on nodes of earlier ones carry none)
            proof = tamper_block(proof, how)
            tampered += 1
        remote.send(Data(req.id, proof))
    assert tampered
    remote.exchange(rep)
    assert_refused(rep, remote, reader)
    assert_untouched(reader, length=8)


def test_answers_to_questions_never_asked_are_dropped(tmp_path: Path) -> None:
    writer, reader, rep, remote = reader_setup(tmp_path)
    announce(remote, writer)
    [upgrade] = remote.requests(remote.exchange(rep))
    remote.send(Data(upgrade.id, writer.proof(upgrade.proof_request)))
    blocks = remote.requests(remote.exchange(rep))
    first = next(r for r in blocks if r.proof_request.block and r.proof_request.block.index == 0)
    other = next(r for r in blocks if r.proof_request.block and r.proof_request.block.index == 1)
    remote.send(Data(9999, writer.proof(first.proof_request)))  # an id we never used
    remote.send(Data(first.id, writer.proof(other.proof_request)))  # block 1 for block 0's request
    remote.send(NoData(4242))
    again = remote.requests(remote.exchange(rep))  # no error: Node drops these too
    assert_untouched(reader, length=8)
    assert any(r.proof_request.block and r.proof_request.block.index == 0 for r in again), "block 0 is asked again"


# --- random and mutated messages ----------------------------------------------------------------

_VALID = [
    Sync(0, 5, 0, True, True, True, True),
    Range(0, 5),
    Range(3, 1, drop=True),
    Want(0, 1024),
    Bitfield(0, [0b1011, 0xFFFFFFFF]),
    NoData(1, 1),
]


@pytest.fixture(scope="module")
def fuzz_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Core, Store]:
    tmp = tmp_path_factory.mktemp("fuzz")
    writer = Core.create(Store(tmp / "w"))
    writer.append([f"block {i}".encode() for i in range(5)])
    return writer, Store(tmp / "r")


def _reader_for_fuzz(writer: Core, store: Store) -> tuple[Core, Replicator, Remote]:
    # The same (empty) reader record serves every example: random data never verifies.
    reader = Core.open(store, writer.key)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[reader])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    return reader, rep, remote


_message = st.one_of(
    st.tuples(st.integers(0, 12), st.binary(max_size=64)),  # any type, random payload
    st.tuples(st.sampled_from(_VALID), st.integers(0, 40), st.integers(0, 255)),  # a byte of a valid one changed
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_message, min_size=1, max_size=8))
def test_random_and_mutated_channel_messages_only_raise_wire_errors(fuzz_stores, messages) -> None:
    writer, store = fuzz_stores
    reader, rep, remote = _reader_for_fuzz(writer, store)
    announce(remote, writer)  # so requests are in flight and data/noData have something to hit
    remote.exchange(rep)
    before = (reader.length, reader.contiguous_length)
    try:
        for item in messages:
            if isinstance(item[0], int):
                remote.send_raw(item[0], item[1])
            else:
                message, pos, xor = item
                payload = bytearray(message.encode())
                if pos < len(payload):
                    payload[pos] ^= xor
                else:
                    payload = payload[: pos % (len(payload) + 1)]  # truncated
                remote.send_raw(message.TYPE, bytes(payload))
            remote.exchange(rep)
    except WireError as error:
        assert str(error) and "\n" not in str(error)  # a one-line reason to log
    # Whatever happened, what is stored checks out (random data can never forge a proof).
    assert (reader.length, reader.contiguous_length) == before
    reader.audit()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_message, min_size=1, max_size=8))
def test_random_and_mutated_messages_to_a_writer_only_raise_wire_errors(fuzz_stores, messages) -> None:
    writer, _ = fuzz_stores
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])  # the side serving the feed
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    try:
        for item in messages:
            if isinstance(item[0], int):
                remote.send_raw(item[0], item[1])
            else:
                message, pos, xor = item
                payload = bytearray(message.encode())
                payload[pos % len(payload)] ^= xor
                remote.send_raw(message.TYPE, bytes(payload))
            remote.exchange(rep)
    except WireError as error:
        assert str(error) and "\n" not in str(error)
    assert writer.length == 5
    writer.audit()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=6))
def test_random_protomux_frames_into_a_replicator_only_raise_wire_errors(frames: list[bytes]) -> None:
    rep = Replicator(True, HANDSHAKE_HASH, lookup=lambda discovery_key: None)
    try:
        for frame in frames:
            rep.receive(frame)
            rep.frames_to_send()
    except WireError as error:
        assert "\n" not in str(error)


# --- bounded under floods ---------------------------------------------------------------------


def test_block_requests_in_flight_never_exceed_the_limit(tmp_path: Path) -> None:
    writer, reader, rep, remote = reader_setup(tmp_path, blocks=MAX_INFLIGHT * 3)
    announce(remote, writer)
    [upgrade] = remote.requests(remote.exchange(rep))
    remote.send(Data(upgrade.id, writer.proof(upgrade.proof_request)))
    asked = remote.requests(remote.exchange(rep))
    for _ in range(50):  # the remote never answers, and keeps re-announcing
        announce(remote, writer)
        remote.send(Want(0, 100))
        asked += remote.requests(remote.exchange(rep))
    assert len(asked) == MAX_INFLIGHT
    assert len({r.id for r in asked}) == MAX_INFLIGHT
    peer = rep._by_key[writer.discovery_key]
    assert len(peer.inflight) == len(peer.blocks_inflight) == MAX_INFLIGHT and not peer.parked
    # Answering some frees exactly that many slots.
    for req in asked[:10]:
        remote.send(Data(req.id, writer.proof(req.proof_request)))
    more = remote.requests(remote.exchange(rep))
    assert len(more) == 10 and reader.contiguous_length == 10
    reader.audit()


def test_scattered_range_announcements_are_capped(tmp_path: Path) -> None:
    writer, _reader, rep, remote = reader_setup(tmp_path, blocks=4)
    remote.send(Sync(0, 1_000_000, 0, uploading=True, downloading=True, has_manifest=True))
    for i in range(MAX_REMOTE_RANGES * 3):
        remote.send(Range(10 + 2 * i, 1))  # gaps between them: none merges
        if i % 500 == 0:
            remote.exchange(rep)
    remote.exchange(rep)
    peer = rep._by_key[writer.discovery_key]
    assert len(peer.remote_ranges) == MAX_REMOTE_RANGES


def test_floods_of_wants_and_requests_get_answers_no_bigger_than_a_proof_each(tmp_path: Path) -> None:
    writer = writer_core(tmp_path, 64)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    for i in range(MAX_REMOTE_REQUESTS):
        remote.send(Want(i, 1))
        # Nonsense (a block far past the end, absurd node counts): refused, not crashed.
        remote.send(Request(i, ProofRequest(0, block=BlockRequest(10**6 + i, 99))))
    for frame in remote.mux.frames_to_send():
        rep.receive(frame)
    out = drain(rep)
    assert sum(map(len, out)) < MAX_REMOTE_REQUESTS * 64  # a few bytes per answer: no amplification
    nodata = [
        m
        for f in out
        for e in remote.mux.receive(f)
        if isinstance(e, ChannelMessage)
        for m in [decode_message(e.type, e.payload)]
        if isinstance(m, (NoData, Data))
    ]
    assert len(nodata) == MAX_REMOTE_REQUESTS  # every request answered once


def test_requests_are_answered_a_batch_at_a_time_and_a_flood_ends_the_connection(tmp_path: Path) -> None:
    writer = writer_core(tmp_path, 64)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    with remote.mux.batch():  # all in one frame, as a flooding peer sends them
        for i in range(MAX_REMOTE_REQUESTS):
            remote.send(Request(i, ProofRequest(0, block=BlockRequest(i % 64, 0))))
    for frame in remote.mux.frames_to_send():
        rep.receive(frame)
    answers = 0
    while rep.replies_pending:  # each call does a bounded amount of work
        got = [e for f in rep.frames_to_send() for e in remote.mux.receive(f) if isinstance(e, ChannelMessage)]
        assert 0 < len(got) <= REPLY_BATCH
        answers += len(got)
    assert answers == MAX_REMOTE_REQUESTS
    # One batch frame of more requests than any honest peer has in flight ends the connection.
    with remote.mux.batch():
        for i in range(MAX_REMOTE_REQUESTS + 1):
            remote.send(Request(i, ProofRequest(0, block=BlockRequest(0, 0))))
    with pytest.raises(ReplicationError, match=f"over {MAX_REMOTE_REQUESTS} requests at once"):
        for frame in remote.mux.frames_to_send():
            rep.receive(frame)


def test_requests_wait_encoded_so_a_peer_that_never_reads_costs_little_memory(tmp_path: Path) -> None:
    """A flood of requests from a peer that reads nothing waits in the replicator: each one as
    its ~10 encoded bytes in one object, not as decoded messages (four objects each), whose
    freed memory would leave the heap fragmented after the peer left."""
    writer = writer_core(tmp_path, 64)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    count = MAX_REMOTE_REQUESTS - 1
    with remote.mux.batch():
        for i in range(count):
            remote.send(Request(i, ProofRequest(0, block=BlockRequest(i % 64, 0))))
    frames = remote.mux.frames_to_send()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for frame in frames:
            rep.receive(frame)
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert rep.replies_pending
    assert grown / count < 80, f"{grown / count:.0f} bytes per waiting request"
    answered = [m for m in (remote.exchange(rep)) if isinstance(m, (Data, NoData))]
    assert len(answered) == count  # decoded when answered, every one


def test_a_malformed_request_closes_only_that_feeds_channel(tmp_path: Path) -> None:
    writer = writer_core(tmp_path, 8)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    remote.send(Request(1, ProofRequest(0, block=BlockRequest(0, 0))))
    remote.send_raw(Request.TYPE, b"\xff\xff\xff")  # not a request
    answers = remote.exchange(rep)
    assert [m.request_id for m in answers if isinstance(m, Data)] == [1]  # the good one, answered
    refused = [e for e in rep.take_events() if isinstance(e, FeedRefused)]
    assert [e.core for e in refused] == [writer] and "malformed request" in refused[0].reason
    assert writer.discovery_key not in rep._by_key


def test_a_batch_frame_of_too_many_messages_is_refused_before_it_is_handled(tmp_path: Path) -> None:
    writer = writer_core(tmp_path, 4)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    with remote.mux.batch():
        for i in range(MAX_BATCH_MESSAGES + 1):
            remote.send(Want(i, 1))
    [frame] = remote.mux.frames_to_send()
    with pytest.raises(WireError, match=f"over {MAX_BATCH_MESSAGES} messages"):
        rep.receive(frame)
    assert not rep.replies_pending


def test_requests_for_blocks_that_do_not_exist_get_no_data(tmp_path: Path) -> None:
    writer = writer_core(tmp_path, 4)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    asks = [
        ProofRequest(0, block=BlockRequest(4, 0)),
        ProofRequest(0, block=BlockRequest(2**50, 3)),
        ProofRequest(0, block=BlockRequest(0, 2**40)),
        ProofRequest(7, block=BlockRequest(0, 0)),
        ProofRequest(0, upgrade=UpgradeRequest(0, 2**50)),
        ProofRequest(0, upgrade=UpgradeRequest(3, 0)),
    ]
    for i, ask in enumerate(asks):
        remote.send(Request(100 + i, ask))
    answers = {
        m.request if isinstance(m, NoData) else m.request_id: m
        for m in remote.exchange(rep)
        if isinstance(m, (Data, NoData))
    }
    assert sorted(answers) == [100 + i for i in range(len(asks))]
    assert isinstance(answers[100], NoData) and isinstance(answers[101], NoData)


def test_a_flood_of_opens_for_unknown_cores_is_rejected_without_growing_state(tmp_path: Path) -> None:
    writer = writer_core(tmp_path, 1)
    rep = Replicator(False, HANDSHAKE_HASH, cores=[writer])
    remote = Remote(writer.key, writer.discovery_key)
    remote.exchange(rep)
    for i in range(3000):
        remote.mux.open(PROTOCOL, i.to_bytes(32, "big"), Handshake(b"\x00" * 32).encode())
        if i % 100 == 0:
            remote.exchange(rep)
    remote.exchange(rep)
    assert len(rep._peers) == 1 and len(rep.mux.channels) == 1
    # Rejected numbers are free again for the remote, so our table of its channels stays small.
    assert len(rep.mux._remote) <= 102


def test_unverified_answers_that_overtake_their_anchor_are_held_up_to_a_cap(tmp_path: Path) -> None:
    # Requests that rely on nodes an earlier request will deliver carry no nodes; their answers
    # wait (unverified) for that earlier answer. A peer answering only those, with big junk
    # values, must not make us hold MAX_INFLIGHT frames of it.
    writer, reader, rep, remote = reader_setup(tmp_path, blocks=2 * MAX_INFLIGHT)
    announce(remote, writer)
    [upgrade] = remote.requests(remote.exchange(rep))
    remote.send(Data(upgrade.id, writer.proof(upgrade.proof_request)))
    asked = remote.requests(remote.exchange(rep))
    overtaking = [r for r in asked if r.proof_request.block and r.proof_request.block.nodes == 0]
    assert len(overtaking) > 100
    junk = b"x" * 256 * 1024
    for req in overtaking:
        assert req.proof_request.block is not None
        remote.send(Data(req.id, Proof(0, block=BlockProof(req.proof_request.block.index, junk))))
        remote.exchange(rep)
    peer = rep._by_key[writer.discovery_key]
    assert sum(len(p.block.value) for _, p in peer.parked if p.block) <= MAX_PARKED_BYTES
    assert len(peer.parked) == MAX_PARKED_BYTES // len(junk)
    # Once their anchors arrive the parked answers are checked, and the junk closes the channel.
    for req in asked:
        if req not in overtaking:
            remote.send(Data(req.id, writer.proof(req.proof_request)))
    remote.exchange(rep)
    assert_refused(rep, remote, reader)
    assert not peer.parked
    reader.audit()


# --- refusals do not turn into request storms ----------------------------------------------------


def test_a_refused_upgrade_is_not_retried_until_the_remote_syncs_again(tmp_path: Path) -> None:
    writer, reader, rep, remote = reader_setup(tmp_path)
    announce(remote, writer)
    upgrades = [r for r in remote.requests(remote.exchange(rep)) if r.proof_request.upgrade]
    assert len(upgrades) == 1
    for _ in range(5):  # refuse it; a replicator that retried at once would ask again each round
        remote.send(NoData(upgrades[-1].id, 2))
        asked = [r for r in remote.requests(remote.exchange(rep)) if r.proof_request.upgrade]
        assert asked == []
    remote.send(
        Sync(writer.fork, writer.length + 1, 0, can_upgrade=True, uploading=True, downloading=True, has_manifest=True)
    )
    asked = [r for r in remote.requests(remote.exchange(rep)) if r.proof_request.upgrade]
    assert len(asked) == 1  # a new length from the remote: worth asking again
    assert_untouched(reader)


def test_a_want_is_sent_once_while_waiting_for_an_announcement(tmp_path: Path) -> None:
    writer, reader, rep, remote = reader_setup(tmp_path)
    remote.send(
        Sync(writer.fork, writer.length, 0, can_upgrade=True, uploading=True, downloading=True, has_manifest=True)
    )
    (upgrade,) = remote.requests(remote.exchange(rep))
    remote.send(Data(upgrade.id, writer.proof(upgrade.proof_request)))
    wants = [m for m in remote.exchange(rep) if isinstance(m, Want)]
    for _ in range(5):  # announce only the last block, again and again: block 0 stays unannounced
        remote.send(Range(writer.length - 1, 1))
        wants += [m for m in remote.exchange(rep) if isinstance(m, Want)]
    assert len(wants) == 1 and reader.length == writer.length
