"""Hostile input at each wire layer: only `WireError`s come out, buffers stay bounded.

Random and mutated frames (hypothesis) for secret-stream, protomux and the messages, plus the
named cases: oversized length prefix, zero-length frame, wrong stream id, bad MAC, invalid
opens and rejects, a flood of messages for a channel nobody accepted, a nested batch.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperpi.wire import protomux as pm
from hyperpi.wire.errors import FrameError, HandshakeError, MuxError, WireError
from hyperpi.wire.noise import keypair
from hyperpi.wire.secret_stream import MAX_SETUP_FRAME, SecretStream

KP_A, KP_B = keypair(b"\x01" * 32), keypair(b"\x02" * 32)


def connected(max_frame_size: int = 2**24 - 1) -> tuple[SecretStream, SecretStream]:
    a = SecretStream(True, KP_A)
    b = SecretStream(False, KP_B, max_frame_size=max_frame_size)
    b.receive_data(a.initiate())
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    assert a.handshake_complete and b.handshake_complete
    return a, b


# --- secret-stream ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5), st.booleans())
def test_random_bytes_into_a_handshake_only_raise_wire_errors(chunks: list[bytes], initiator: bool) -> None:
    s = SecretStream(initiator, KP_A)
    s.initiate()
    try:
        for c in chunks:
            s.receive_data(c)
            assert len(s._inbuf) < 3 + MAX_SETUP_FRAME
    except WireError:
        with pytest.raises(WireError):  # and the stream stays dead
            s.receive_data(b"\x00")


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_session_bytes_only_raise_wire_errors(data) -> None:
    a = SecretStream(True, KP_A)
    b = SecretStream(False, KP_B)
    wire = bytearray(a.initiate())
    b.receive_data(bytes(wire))
    a.receive_data(b.data_to_send())
    tail = a.data_to_send()  # msg3 + header
    session = bytearray(tail + a.send(b"hello") + a.send(b"world" * 20))
    pos = data.draw(st.integers(min_value=0, max_value=len(session) - 1))
    session[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        events = b.receive_data(bytes(session))
    except WireError:
        return
    # A mutation the stream accepted can only be one that left it waiting for more bytes
    # (a length prefix made larger): nothing forged was delivered.
    assert all(getattr(e, "plaintext", b"hello") in (b"hello", b"world" * 20) for e in events)


def test_oversized_length_prefix_is_refused_before_buffering() -> None:
    s = SecretStream(False, KP_B)
    with pytest.raises(FrameError, match="above the limit"):
        s.receive_data((MAX_SETUP_FRAME + 1).to_bytes(3, "little"))
    a, b = connected(max_frame_size=1000)
    with pytest.raises(FrameError, match="1001 is above the limit of 1000"):
        b.receive_data((1001).to_bytes(3, "little") + b"x" * 10)


def test_zero_length_frame() -> None:
    with pytest.raises(FrameError, match="zero-length"):
        SecretStream(False, KP_B).receive_data(b"\x00\x00\x00")
    a, b = connected()
    with pytest.raises(FrameError, match="zero-length"):
        b.receive_data(b"\x00\x00\x00")


def test_wrong_stream_id() -> None:
    a = SecretStream(True, KP_A)
    b = SecretStream(False, KP_B)
    b.receive_data(a.initiate())
    a.receive_data(b.data_to_send())
    out = bytearray(a.data_to_send())
    out[-56] ^= 1  # first byte of the stream id in the header frame
    with pytest.raises(HandshakeError, match="wrong stream id"):
        b.receive_data(bytes(out))


def test_header_of_wrong_size() -> None:
    a = SecretStream(True, KP_A)
    b = SecretStream(False, KP_B)
    b.receive_data(a.initiate())
    a.receive_data(b.data_to_send())
    out = a.data_to_send()
    msg3 = out[: 3 + 64]
    with pytest.raises(HandshakeError, match="invalid header"):
        b.receive_data(msg3 + b"\x10\x00\x00" + b"x" * 16)


def test_bad_mac_and_replay() -> None:
    a, b = connected()
    frame = bytearray(a.send(b"secret"))
    frame[-1] ^= 0x80
    with pytest.raises(FrameError, match="authentication"):
        b.receive_data(bytes(frame))
    a, b = connected()
    f = a.send(b"once")
    assert b.receive_data(f)[0].plaintext == b"once"
    with pytest.raises(FrameError):
        b.receive_data(f)  # replayed: the secretstream state moved on


def test_tampered_handshake_message() -> None:
    a = SecretStream(True, KP_A)
    b = SecretStream(False, KP_B)
    b.receive_data(a.initiate())
    msg2 = bytearray(b.data_to_send())
    msg2[3 + 40] ^= 1  # inside the encrypted static key
    with pytest.raises(HandshakeError, match="authentication"):
        a.receive_data(bytes(msg2))


def test_small_order_ephemeral_is_refused() -> None:
    # msg1 carrying the all-zero point: the responder's DH for msg2 fails, as in libsodium/Node.
    s = SecretStream(False, KP_B)
    with pytest.raises(HandshakeError, match="invalid remote public key"):
        s.receive_data(b"\x20\x00\x00" + bytes(32))
    assert s.data_to_send() == b""


def test_handshake_message_out_of_turn() -> None:
    a = SecretStream(True, KP_A)
    a.initiate()
    with pytest.raises(HandshakeError, match="too short"):
        a.receive_data(b"\x20\x00\x00" + KP_B.public_key)  # msg2 must be 96 bytes


def test_keepalives_are_dropped() -> None:
    a, b = connected()
    assert b.receive_data(a.keepalive() + a.send(b"x") + a.keepalive()) == [pm_message(b"x")]


def pm_message(p: bytes):
    from hyperpi.wire.secret_stream import Message

    return Message(p)


def test_byte_at_a_time_delivery() -> None:
    a, b = connected()
    data = a.send(b"one") + a.send(b"two")
    events = []
    for i in range(len(data)):
        events += b.receive_data(data[i : i + 1])
    assert [e.plaintext for e in events] == [b"one", b"two"]


# --- protomux ----------------------------------------------------------------------------------


def test_invalid_open_ids() -> None:
    mux = pm.Protomux()
    with pytest.raises(MuxError, match="skips ahead"):
        mux.receive(bytes.fromhex("000102") + b"\x01a\x00")  # id 2 before id 1
    mux = pm.Protomux()
    mux.pair("a")
    mux.receive(bytes.fromhex("000101") + b"\x01a\x00")  # held, waiting for our answer
    with pytest.raises(MuxError, match="in use"):
        mux.receive(bytes.fromhex("000101") + b"\x01a\x00")  # id 1 again while open


def test_unpaired_open_is_rejected_and_control_open_refused() -> None:
    mux = pm.Protomux()
    assert mux.receive(bytes.fromhex("000101") + b"\x03abc\x00") == []
    assert mux.frames_to_send() == [bytes.fromhex("000201")]
    mux.receive(bytes.fromhex("000100") + b"\x01a\x00")
    assert mux.frames_to_send() == [bytes.fromhex("000200")]


def test_invalid_reject() -> None:
    with pytest.raises(MuxError, match="invalid reject"):
        pm.Protomux().receive(bytes.fromhex("000205"))


def test_nested_batch() -> None:
    inner = bytes.fromhex("0000" + "01" + "02" + "0000")
    with pytest.raises(MuxError, match="batch inside a batch"):
        pm.Protomux().receive(bytes.fromhex("000000") + bytes([len(inner) - 1]) + inner[1:])


def test_flooding_an_unanswered_channel_is_bounded() -> None:
    mux = pm.Protomux()
    mux.pair("p")
    (req,) = mux.receive(bytes.fromhex("000101") + b"\x01p\x00")
    assert isinstance(req, pm.OpenRequested)
    chunk = b"\x01\x00" + b"x" * 60000
    with pytest.raises(MuxError, match="buffered"):
        for _ in range(pm.MAX_PENDING_BYTES // 60000 + 2):
            mux.receive(chunk)
            assert mux._pending_bytes <= pm.MAX_PENDING_BYTES


def test_buffered_messages_are_delivered_after_accepting() -> None:
    mux = pm.Protomux()
    mux.pair("p")
    (req,) = mux.receive(bytes.fromhex("000101") + b"\x01p\x00hs")
    assert req.handshake == b"hs"
    mux.receive(b"\x01\x05abc")
    ch = mux.open("p", None, b"mine")
    events = mux.next_events()
    assert events == [pm.ChannelOpened(ch, b"hs"), pm.ChannelMessage(ch, 5, b"abc")]
    assert mux._pending_bytes == 0


def test_reject_and_close_of_pending_open() -> None:
    mux = pm.Protomux()
    mux.pair("p")
    (req,) = mux.receive(bytes.fromhex("000101") + b"\x01p\x00")
    mux.frames_to_send()
    mux.reject(req)
    assert mux.frames_to_send() == [bytes.fromhex("000201")]
    mux.receive(bytes.fromhex("000101") + b"\x01p\x00")  # id 1 is free again
    mux.receive(bytes.fromhex("000301"))  # the remote gives up: we answer with a reject
    assert mux.frames_to_send() == [bytes.fromhex("000201")]


def test_local_ids_are_reused_after_close() -> None:
    a, b = pm.Protomux(), pm.Protomux()
    b.pair("p")
    ch = a.open("p", b"\x01")
    for f in a.frames_to_send():
        (req,) = b.receive(f)
    b.open("p", b"\x01")
    assert [type(e) for e in b.next_events()] == [pm.ChannelOpened]
    for f in b.frames_to_send():
        a.receive(f)
    assert ch.opened
    a.close(ch)
    for f in a.frames_to_send():
        (closed,) = b.receive(f)
    assert isinstance(closed, pm.ChannelClosed)
    ch2 = a.open("p", b"\x02")
    assert ch2.local_id == ch.local_id == 1
    for f in a.frames_to_send():
        (req2,) = b.receive(f)
    assert req2.id == b"\x02"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_random_frames_only_raise_mux_errors(frames: list[bytes]) -> None:
    mux = pm.Protomux()
    mux.pair("p")
    mux.open("p", None)
    try:
        for f in frames:
            for e in mux.receive(f):
                if isinstance(e, pm.OpenRequested) and e.remote_id % 2:
                    mux.open(e.protocol, e.id)
    except MuxError:
        pass
    assert mux._pending_bytes <= pm.MAX_PENDING_BYTES


VALID_FRAMES = [
    bytes.fromhex("0001010f6879706572636f72652f616c70686120") + b"\xb4" * 32 + b"\x01" + b"\xfc" * 32,
    bytes.fromhex("00000105000f000300040800000003"[:-2]),
    bytes.fromhex("01000e000003"),
    bytes.fromhex("000301"),
]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_frames_only_raise_mux_errors(data) -> None:
    mux = pm.Protomux()
    mux.pair("hypercore/alpha")
    frames = [bytearray(f) for f in VALID_FRAMES]
    i = data.draw(st.integers(min_value=0, max_value=len(frames) - 1))
    j = data.draw(st.integers(min_value=0, max_value=len(frames[i]) - 1))
    frames[i][j] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        for f in frames:
            for e in mux.receive(bytes(f)):
                if isinstance(e, pm.OpenRequested):
                    mux.open(e.protocol, e.id)
    except MuxError:
        pass
