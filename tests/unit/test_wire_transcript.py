"""Replay the recorded Node <-> Node session (vectors.json `transcript`) through our layers.

Both sides are rebuilt from the recorded seeds (static keys and the two Noise ephemerals), so
every handshake byte, the handshake hash, the split keys and the stream ids must come out
identical; then every recorded encrypted frame is decrypted with the recorded headers, parsed
by protomux and the message codecs, and compared with Node's decoding of it.
"""

from __future__ import annotations

from hyperpi.wire import messages as m
from hyperpi.wire.noise import keypair
from hyperpi.wire.protomux import ChannelClosed, ChannelMessage, ChannelOpened, OpenRequested, Protomux
from hyperpi.wire.secret_stream import HandshakeDone, Message, SecretStream, stream_id

from .wire_json import from_json, manifest_bytes


def _sides(t: dict) -> tuple[SecretStream, SecretStream]:
    ns, eph = t["noise_static"], t["noise_ephemeral_calls_in_order"]
    initiator = SecretStream(
        True, keypair(bytes.fromhex(ns["initiator"]["seed"])), ephemeral_keypair=keypair(bytes.fromhex(eph[0]["seed"]))
    )
    responder = SecretStream(
        False, keypair(bytes.fromhex(ns["responder"]["seed"])), ephemeral_keypair=keypair(bytes.fromhex(eph[1]["seed"]))
    )
    return initiator, responder


def _replay(t: dict):
    """Feed each recorded chunk to the side that received it; returns both sides, the bytes
    each produced during the handshake, and the plaintexts each received, in order."""
    initiator, responder = _sides(t)
    produced = {"i2r": bytearray(initiator.initiate()), "r2i": bytearray(responder.initiate())}
    received = {"i2r": [], "r2i": []}
    done = {"i2r": [], "r2i": []}
    for event in t["events"]:
        if "dir" not in event:
            continue
        d = event["dir"]
        side = responder if d == "i2r" else initiator
        answer = "r2i" if d == "i2r" else "i2r"
        for e in side.receive_data(bytes.fromhex(event["hex"])):
            if isinstance(e, Message):
                received[d].append(e.plaintext)
            else:
                assert isinstance(e, HandshakeDone)
                done[d].append(e)
        produced[answer] += side.data_to_send()
    return initiator, responder, produced, received, done


def test_handshake_is_byte_identical(vectors: dict) -> None:
    t = vectors["transcript"]
    initiator, responder, produced, _, done = _replay(t)
    frames = t["analysis"]
    msg1, msg3 = frames["i2r"]["frames"][0]["frame_hex"], frames["i2r"]["frames"][1]["frame_hex"]
    msg2 = frames["r2i"]["frames"][0]["frame_hex"]

    def framed(hexstr: str) -> bytes:
        b = bytes.fromhex(hexstr)
        return len(b).to_bytes(3, "little") + b

    # What each side wrote: its Noise messages, then 32-byte stream id + a fresh random header.
    assert produced["i2r"][: 3 + 32 + 3 + 64] == framed(msg1) + framed(msg3)
    header_i = produced["i2r"][3 + 32 + 3 + 64 :]
    assert produced["r2i"][: 3 + 96] == framed(msg2)
    header_r = produced["r2i"][3 + 96 :]

    keys = t["session_keys"]
    hh = bytes.fromhex(keys["initiator"]["handshake_hash"])
    assert initiator.handshake_hash == responder.handshake_hash == hh
    assert initiator.remote_public_key.hex() == keys["initiator"]["remote_public_key"]
    assert responder.remote_public_key.hex() == keys["responder"]["remote_public_key"]
    assert done["r2i"][0].handshake_hash == hh and done["i2r"][0].handshake_hash == hh

    sid_i = frames["i2r"]["frames"][2]["stream_id"]
    sid_r = frames["r2i"]["frames"][1]["stream_id"]
    assert header_i[:3] == (56).to_bytes(3, "little") and header_i[3:35].hex() == sid_i
    assert header_r[:3] == (56).to_bytes(3, "little") and header_r[3:35].hex() == sid_r
    assert stream_id(hh, True).hex() == sid_i and stream_id(hh, False).hex() == sid_r


def test_split_keys_match(vectors: dict) -> None:
    from hyperpi.wire.noise import NoiseXX

    t = vectors["transcript"]
    ns, eph = t["noise_static"], t["noise_ephemeral_calls_in_order"]
    i = NoiseXX(True, keypair(bytes.fromhex(ns["initiator"]["seed"])), keypair(bytes.fromhex(eph[0]["seed"])))
    r = NoiseXX(False, keypair(bytes.fromhex(ns["responder"]["seed"])), keypair(bytes.fromhex(eph[1]["seed"])))
    r.recv(i.send())
    i.recv(r.send())
    r.recv(i.send())
    keys = t["session_keys"]
    assert (i.tx.hex(), i.rx.hex()) == (keys["initiator"]["tx"], keys["initiator"]["rx"])
    assert (r.tx.hex(), r.rx.hex()) == (keys["responder"]["tx"], keys["responder"]["rx"])


def _message_json(msg) -> dict:
    """Our decoded message in Node's JSON shape (for Data, without the manifest)."""
    if isinstance(msg, m.Data):
        p = msg.proof

        def nodes(ns):
            return [{"index": n.index, "size": n.size, "hash": n.hash.hex()} for n in ns]

        u = p.upgrade
        return {
            "request": msg.request_id,
            "fork": p.fork,
            "block": {"index": p.block.index, "value": p.block.value.hex(), "nodes": nodes(p.block.nodes)}
            if p.block
            else None,
            "hash": None,
            "seek": None,
            "upgrade": {
                "start": u.start,
                "length": u.length,
                "nodes": nodes(u.nodes),
                "additionalNodes": nodes(u.additional_nodes),
                "signature": u.signature.hex(),
            }
            if u
            else None,
        }
    raise TypeError(msg)


def _check_message(expected: dict, event: ChannelMessage) -> None:
    assert event.type == expected["type"], expected
    msg = m.decode_message(event.type, event.payload)
    if expected["name"] == "data":
        want = dict(expected["message"])
        manifest = want.pop("manifest")
        assert _message_json(msg) == want
        assert msg.proof.manifest == (manifest_bytes(manifest) if manifest else None)
    else:
        assert msg == from_json(expected["name"], expected["message"])


def test_every_frame_decrypts_and_parses_as_node_decoded_it(vectors: dict) -> None:
    t = vectors["transcript"]
    initiator, responder, _, received, _ = _replay(t)
    key = bytes.fromhex(t["writer"]["core_key"])
    dkey = bytes.fromhex(t["writer"]["discovery_key"])
    hh = initiator.handshake_hash
    checked = 0
    for d, side_is_initiator in (("i2r", False), ("r2i", True)):
        frames = [f for f in t["analysis"][d]["frames"] if f["kind"] == "protomux"]
        assert [p.hex() for p in received[d]] == [f["plaintext_hex"] for f in frames]
        # The receiving side's mux: it opened its own channel first, as Node did.
        mux = Protomux()
        own = mux.open(m.PROTOCOL, dkey, m.Handshake(m.capability(hh, key, side_is_initiator)).encode())
        sent_open = mux.frames_to_send()[0]
        mine = "r2i" if d == "i2r" else "i2r"
        my_open = next(f for f in t["analysis"][mine]["frames"] if f.get("decoded", {}).get("control") == "open")
        assert sent_open.hex() == my_open["plaintext_hex"]  # our open is Node's, byte for byte
        for f, plaintext in zip(frames, received[d], strict=True):
            events = mux.receive(plaintext)
            dec = f["decoded"]
            if dec.get("control") == "open":
                (ev,) = events
                assert isinstance(ev, ChannelOpened) and ev.channel is own
                hs = m.Handshake.decode(ev.handshake)
                assert hs.capability == m.capability(hh, key, not side_is_initiator)
                assert hs.capability.hex() == dec["handshake"]["capability"] and hs.seeks
            elif dec.get("control") == "close":
                assert [type(e) for e in events] == [ChannelClosed]
            elif dec.get("control") == "batch":
                assert len(events) == len(dec["messages"])
                for e, expected in zip(events, dec["messages"], strict=True):
                    _check_message(expected, e)
            else:
                (e,) = events
                _check_message(dec, e)
            assert not any(isinstance(e, OpenRequested) for e in events)
            checked += 1
    assert checked == len(received["i2r"]) + len(received["r2i"]) == 28  # as Node decoded them
