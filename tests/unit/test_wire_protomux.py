"""protomux between two of our muxes: several channels on one connection, batches that
switch channels, opens from either side first, close and reject."""

from __future__ import annotations

from hyperpi.wire import protomux as pm


def pump(src: pm.Protomux, dst: pm.Protomux) -> list:
    events = []
    for frame in src.frames_to_send():
        events += dst.receive(frame)
    return events


def test_three_channels_opened_from_both_sides_and_batched() -> None:
    a, b = pm.Protomux(), pm.Protomux()
    a.pair("hypercore/alpha")
    b.pair("hypercore/alpha")
    keys = [bytes([i]) * 32 for i in range(3)]
    # a opens the first two, b opens the third: each side answers the other's requests.
    ca = {k: a.open("hypercore/alpha", k, b"A") for k in keys[:2]}
    cb = {keys[2]: b.open("hypercore/alpha", keys[2], b"B")}
    for req in pump(a, b):
        assert isinstance(req, pm.OpenRequested) and req.handshake == b"A"
        cb[req.id] = b.open(req.protocol, req.id, b"B")
    opened_b = b.next_events()
    assert [type(e) for e in opened_b] == [pm.ChannelOpened] * 2
    events = pump(b, a)
    assert [type(e) for e in events] == [pm.OpenRequested, pm.ChannelOpened, pm.ChannelOpened]
    ca[keys[2]] = a.open("hypercore/alpha", keys[2], b"A")
    assert [type(e) for e in a.next_events()] == [pm.ChannelOpened]
    assert [type(e) for e in pump(a, b)] == [pm.ChannelOpened]
    assert all(c.opened for c in [*ca.values(), *cb.values()])
    assert sorted(c.local_id for c in ca.values()) == [1, 2, 3]

    # One batch frame carrying messages for all three channels, switching channel ids.
    with a.batch():
        for i, k in enumerate(keys):
            a.send(ca[k], i, b"first %d" % i)
            a.send(ca[k], 8, b"second %d" % i)
    frames = a.frames_to_send()
    assert len(frames) == 1 and frames[0][:2] == b"\x00\x00"
    got = []
    for f in frames:
        got += b.receive(f)
    assert [(e.channel.id, e.type, e.payload) for e in got] == [
        (k, t, p) for i, k in enumerate(keys) for t, p in ((i, b"first %d" % i), (8, b"second %d" % i))
    ]
    assert all(e.channel is cb[e.channel.id] for e in got)

    # Closing one channel leaves the others working.
    a.close(ca[keys[1]])
    (closed,) = pump(a, b)
    assert isinstance(closed, pm.ChannelClosed) and closed.channel is cb[keys[1]]
    assert not a.send(ca[keys[1]], 0, b"x")
    b.send(cb[keys[0]], 0, b"still here")
    (msg,) = pump(b, a)
    assert msg.channel is ca[keys[0]] and msg.payload == b"still here"
    b.send(cb[keys[1]], 0, b"closed")  # b has not closed its side; a ignores it
    assert pump(b, a) == []


def test_reject_reaches_the_opener() -> None:
    a, b = pm.Protomux(), pm.Protomux()
    b.pair("p")
    ch = a.open("p", b"\x07")
    (req,) = pump(a, b)
    b.reject(req)
    (rejected,) = pump(b, a)
    assert rejected == pm.ChannelRejected(ch) and ch.closed
    assert a.open("p", b"\x08").local_id == 1  # the id was freed


def test_unpaired_protocol_is_rejected_without_an_event() -> None:
    a, b = pm.Protomux(), pm.Protomux()
    ch = a.open("other", None)
    assert pump(a, b) == []
    assert pump(b, a) == [pm.ChannelRejected(ch)]
