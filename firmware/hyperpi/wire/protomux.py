"""protomux: many protocol channels over one secret-stream, sans-IO (Holepunch `protomux` 3.x).

Each secret-stream message is one protomux frame, `uint channel || uint type || payload`
(protocol doc 6). Channel 0 is control: 0 batch, 1 open, 2 reject, 3 close. A channel is
identified by (protocol, id) and is open once both sides sent an `open` for it; each side
numbers its own channels from 1 and sends on a channel under its own number.

    mux = Protomux()
    mux.pair("hypercore/alpha")                      # accept remote opens of this protocol
    ch = mux.open("hypercore/alpha", dkey, handshake)  # queues our open
    for plaintext in mux.frames_to_send(): ...       # each one secret-stream message
    for event in mux.receive(plaintext): ...         # OpenRequested, ChannelOpened, ...
    mux.send(ch, 0, payload)
    with mux.batch(): mux.send(ch, 0, a); mux.send(ch, 8, b)   # one batch frame

Events come out of `receive()`. `open()` can also complete a pairing (when the remote open
arrived first, as an `OpenRequested`); the events that causes (ChannelOpened, then any
messages buffered for the channel) are returned by the next `receive()` or by
`next_events()`; call `next_events()` after `open()` to see them at once.

A remote `open` for a (protocol, id) with no local channel and no `pair()` registration is
rejected, as Node does; the connection stays up. Rule violations raise `MuxError`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hyperpi.hypercore.types import quick_init

from .encoding import (
    DecodeError,
    State,
    decode_optional_buffer,
    decode_string,
    decode_uint,
    encode_optional_buffer,
    encode_string,
    encode_uint,
)
from .errors import MuxError

# Bytes of messages we hold for channels the remote opened and we have not answered yet
# (accounted as Node does: 512 + payload length each). Node pauses the stream above 32 KiB
# (MAX_BUFFERED); we have no backpressure in a sans-IO core, so we allow more, and past this
# the remote is flooding a channel nobody accepted and the connection is closed.
MAX_PENDING_BYTES = 4 * 1024 * 1024
# Highest channel number a remote may open. Node takes ids from a free list starting at 1,
# so a real peer stays near the number of cores it shares; this bounds our id table.
MAX_CHANNEL_ID = 65536
# A batch frame is flushed when it reaches this size (Node's MAX_BATCH, 8 MiB).
MAX_BATCH = 8 * 1024 * 1024
# Messages in one received batch frame. Every decoded message is an event object (~200 bytes)
# held until the frame is handled, so 5 MB of 10-byte requests would cost ~100 MB. Node sends a
# few per channel plus its replies to our requests (at most 512 per core in flight, and its cork
# is per connection, so replies for many cores can share a frame): 64 cores' worth fits.
MAX_BATCH_MESSAGES = 32768

Key = tuple[str, "bytes | None"]


@dataclass(eq=False)
class Channel:
    """One of our channels. `opened` once both sides sent `open`; `closed` after either closed."""

    protocol: str
    id: bytes | None
    local_id: int
    remote_id: int = 0
    opened: bool = False
    closed: bool = False
    remote_handshake: bytes = b""


@dataclass(frozen=True)
class OpenRequested:
    """The remote opened (protocol, id), which we have not opened: call `open()` or `reject()`."""

    protocol: str
    id: bytes | None
    handshake: bytes
    remote_id: int


@dataclass(frozen=True)
class ChannelOpened:
    """Both sides opened the channel; `handshake` is the remote's handshake payload."""

    channel: Channel
    handshake: bytes


@dataclass(frozen=True)
class ChannelRejected:
    """The remote refused our open."""

    channel: Channel


@dataclass(frozen=True)
class ChannelClosed:
    """The remote closed the channel."""

    channel: Channel


@quick_init
@dataclass(frozen=True)
class ChannelMessage:
    channel: Channel
    type: int
    payload: bytes


Event = OpenRequested | ChannelOpened | ChannelRejected | ChannelClosed | ChannelMessage


@dataclass(eq=False)
class _Remote:
    """What we know about one remote channel number."""

    key: Key
    handshake: bytes
    channel: Channel | None = None
    pending: list[tuple[int, bytes]] | None = field(default_factory=list)  # None once paired


def _key(protocol: str, id: bytes | None) -> Key:
    return (protocol, id or None)


class Protomux:
    """The channel multiplexer of one connection: plaintext frames in, events and frames out."""

    def __init__(self) -> None:
        self._local: list[Channel | None] = []
        self._free: list[int] = []
        self._remote: list[_Remote | None] = []
        self._outgoing: dict[Key, deque[int]] = {}  # our opens waiting for the remote's
        self._incoming: dict[Key, deque[int]] = {}  # remote opens waiting for ours
        self._pairs: set[Key] = set()
        self._pending_bytes = 0
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._corked = 0
        self._batch: list[tuple[int, bytes]] = []
        self._batch_size = 0

    # --- API: channels ---

    def pair(self, protocol: str, id: bytes | None = None) -> None:
        """Accept remote opens for (protocol, id) as OpenRequested; id None = any id."""
        self._pairs.add((protocol, id))

    def unpair(self, protocol: str, id: bytes | None = None) -> None:
        self._pairs.discard((protocol, id))

    def open(self, protocol: str, id: bytes | None = None, handshake: bytes = b"") -> Channel:
        """Open a channel (or accept the remote's pending open of the same protocol and id)."""
        index = self._free.pop() if self._free else len(self._local)
        if index == len(self._local):
            self._local.append(None)
        ch = Channel(protocol, id or None, index + 1)
        self._local[index] = ch
        out = bytearray(b"\x00\x01")
        encode_uint(out, ch.local_id)
        encode_string(out, protocol)
        encode_optional_buffer(out, id)
        out += handshake
        self._write_control(bytes(out))

        key = _key(protocol, id)
        waiting = self._incoming.get(key)
        if waiting:
            remote_id = waiting.popleft()
            if not waiting:
                del self._incoming[key]
            r = self._remote[remote_id - 1]
            assert r is not None and r.pending is not None
            self._pair_channel(ch, remote_id, r)
            pending, r.pending = r.pending, None
            for type_, payload in pending:
                self._pending_bytes -= 512 + len(payload)
                self._events.append(ChannelMessage(ch, type_, payload))
        else:
            self._outgoing.setdefault(key, deque()).append(ch.local_id)
        return ch

    def reject(self, request: OpenRequested) -> None:
        """Refuse a remote open we were asked about."""
        key = _key(request.protocol, request.id)
        waiting = self._incoming.get(key)
        if not waiting or request.remote_id not in waiting:
            return  # already answered
        waiting.remove(request.remote_id)
        if not waiting:
            del self._incoming[key]
        self._drop_remote(request.remote_id)
        self._send_reject(request.remote_id)

    def close(self, ch: Channel) -> None:
        """Close our channel; the remote gets `close`. Not echoed back."""
        if ch.closed:
            return
        out = bytearray(b"\x00\x03")
        encode_uint(out, ch.local_id)
        self._write_control(bytes(out))
        ch.closed = True
        if ch.remote_id:
            self._remote[ch.remote_id - 1] = None
            self._free.append(ch.local_id - 1)  # the remote knew it: reusable now
        # Otherwise the id stays listed as an outgoing open until the remote's open or reject.
        self._local[ch.local_id - 1] = None

    def send(self, ch: Channel, type: int, payload: bytes) -> bool:
        """Queue one message on a channel; False if the channel is closed."""
        if ch.closed:
            return False
        head = bytearray()
        if self._corked:
            encode_uint(head, type)
            self._push_batch(ch.local_id, bytes(head) + payload)
            return True
        encode_uint(head, ch.local_id)
        encode_uint(head, type)
        self._out.append(bytes(head) + payload)
        return True

    def cork(self) -> None:
        """Collect the following messages into one batch frame until the matching uncork()."""
        self._corked += 1

    def uncork(self) -> None:
        self._corked -= 1
        if self._corked == 0:
            self._flush_batch()

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.cork()
        try:
            yield
        finally:
            self.uncork()

    def frames_to_send(self) -> list[bytes]:
        """The frames queued so far; send each as one secret-stream message."""
        out, self._out = self._out, []
        return out

    @property
    def queued_bytes(self) -> int:
        """Bytes of frames queued and not yet taken by `frames_to_send`."""
        return sum(map(len, self._out)) + self._batch_size

    def next_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def channels(self) -> list[Channel]:
        return [c for c in self._local if c is not None]

    # --- incoming ---

    def receive(self, plaintext: bytes) -> list[Event]:
        """Handle one decrypted secret-stream message; returns the events, oldest first."""
        if plaintext:  # Node ignores empty frames
            state = State(plaintext)
            try:
                self._decode(decode_uint(state), state, in_batch=False)
            except DecodeError as e:
                raise MuxError(f"protomux: bad frame ({e})") from None
        return self.next_events()

    def _decode(self, remote_id: int, state: State, in_batch: bool) -> None:
        type_ = decode_uint(state)
        if remote_id == 0:
            if type_ == 0:
                if in_batch:
                    raise MuxError("protomux: batch inside a batch")
                self._on_batch(state)
            elif type_ == 1:
                self._on_open(state)
            elif type_ == 2:
                self._on_reject(state)
            elif type_ == 3:
                self._on_close(state)
            return  # unknown control types are ignored, as in Node
        r = self._remote[remote_id - 1] if remote_id <= len(self._remote) else None
        if r is None:
            return  # a channel that is closed or never opened: Node ignores these too
        payload = state.buffer[state.start : state.end]
        if r.pending is not None:
            self._pending_bytes += 512 + len(payload)
            if self._pending_bytes > MAX_PENDING_BYTES:
                raise MuxError(f"protomux: over {MAX_PENDING_BYTES} bytes buffered for unanswered channels")
            r.pending.append((type_, payload))
        elif r.channel is not None:
            self._events.append(ChannelMessage(r.channel, type_, payload))

    def _on_batch(self, state: State) -> None:
        end = state.end
        remote_id = decode_uint(state)
        count = 0
        while state.start < end:
            count += 1
            if count > MAX_BATCH_MESSAGES:
                raise MuxError(f"protomux: batch of over {MAX_BATCH_MESSAGES} messages")
            n = decode_uint(state)
            if n == 0:
                remote_id = decode_uint(state)
                continue
            if state.start + n > end:
                raise MuxError("protomux: batch entry longer than the batch")
            sub = State(state.buffer, state.start, state.start + n)
            self._decode(remote_id, sub, in_batch=True)
            state.start += n

    def _on_open(self, state: State) -> None:
        remote_id = decode_uint(state)
        protocol = decode_string(state)
        id = decode_optional_buffer(state)
        handshake = state.buffer[state.start : state.end]
        if remote_id == 0:
            self._send_reject(0)  # nobody may open the control channel
            return
        if remote_id > MAX_CHANNEL_ID:
            raise MuxError(f"protomux: invalid open, channel id {remote_id} above {MAX_CHANNEL_ID}")
        rid = remote_id - 1
        # Node's rule: a new id must be free and at most one above the highest seen.
        if rid == len(self._remote):
            self._remote.append(None)
        if rid >= len(self._remote) or self._remote[rid] is not None:
            raise MuxError(f"protomux: invalid open, channel id {remote_id} is in use or skips ahead")
        key = _key(protocol, id)
        waiting = self._outgoing.get(key)
        if waiting:
            local_id = waiting.popleft()
            if not waiting:
                del self._outgoing[key]
            ch = self._local[local_id - 1]
            if ch is None or ch.local_id != local_id:
                self._free.append(local_id - 1)  # we closed it before the remote answered
                return
            r = _Remote(key, handshake, pending=None)
            self._remote[rid] = r
            self._pair_channel(ch, remote_id, r)
            return
        if key in self._pairs or (protocol, None) in self._pairs:
            self._remote[rid] = _Remote(key, handshake)
            self._incoming.setdefault(key, deque()).append(remote_id)
            self._events.append(OpenRequested(protocol, id, handshake, remote_id))
            return
        self._send_reject(remote_id)

    def _pair_channel(self, ch: Channel, remote_id: int, r: _Remote) -> None:
        r.channel = ch
        ch.remote_id = remote_id
        ch.remote_handshake = r.handshake
        ch.opened = True
        self._events.append(ChannelOpened(ch, r.handshake))

    def _on_reject(self, state: State) -> None:
        local_id = decode_uint(state)
        for key, waiting in self._outgoing.items():
            if local_id in waiting:
                waiting.remove(local_id)
                if not waiting:
                    del self._outgoing[key]
                self._free.append(local_id - 1)
                ch = self._local[local_id - 1]
                self._local[local_id - 1] = None
                if ch is not None:
                    ch.closed = True
                    self._events.append(ChannelRejected(ch))
                return
        raise MuxError(f"protomux: invalid reject for channel {local_id}")

    def _on_close(self, state: State) -> None:
        remote_id = decode_uint(state)
        if remote_id == 0 or remote_id > len(self._remote):
            return
        r = self._remote[remote_id - 1]
        if r is None:
            return
        if r.channel is not None:
            ch = r.channel
            self._remote[remote_id - 1] = None
            ch.closed = True
            self._local[ch.local_id - 1] = None
            self._free.append(ch.local_id - 1)
            self._events.append(ChannelClosed(ch))
            return
        # The remote gave up on an open we never answered: answer it with a reject, which
        # lets the remote free its channel id.
        waiting = self._incoming.get(r.key)
        if waiting and remote_id in waiting:
            waiting.remove(remote_id)
            if not waiting:
                del self._incoming[r.key]
        self._drop_remote(remote_id)
        self._send_reject(remote_id)

    # --- helpers ---

    def _drop_remote(self, remote_id: int) -> None:
        r = self._remote[remote_id - 1]
        if r is not None and r.pending:
            self._pending_bytes -= sum(512 + len(p) for _, p in r.pending)
        self._remote[remote_id - 1] = None

    def _send_reject(self, remote_id: int) -> None:
        out = bytearray(b"\x00\x02")
        encode_uint(out, remote_id)
        self._write_control(bytes(out))

    def _write_control(self, frame: bytes) -> None:
        if self._corked:
            self._push_batch(0, frame[1:])  # control messages ride in the batch on channel 0
        else:
            self._out.append(frame)

    def _push_batch(self, local_id: int, message: bytes) -> None:
        if self._batch_size >= MAX_BATCH:
            self._flush_batch()
        self._batch.append((local_id, message))
        self._batch_size += len(message) + 12

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_size = self._batch, [], 0
        prev = batch[0][0]
        out = bytearray(b"\x00\x00")
        encode_uint(out, prev)
        for local_id, message in batch:
            if local_id != prev:
                out.append(0)
                encode_uint(out, local_id)
                prev = local_id
            encode_uint(out, len(message))
            out += message
        self._out.append(bytes(out))
