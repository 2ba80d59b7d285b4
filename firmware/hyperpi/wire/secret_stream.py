"""@hyperswarm/secret-stream over a byte stream, sans-IO: framing, Noise XX, secretstream.

Every message in both directions is `uint24le(length) || payload` (protocol doc 5.1). The first
three frames are the Noise XX handshake (`noise.py`); then each side sends one 56-byte frame,
`streamId || secretstream header`, and after that every frame is one libsodium
`crypto_secretstream_xchacha20poly1305` message (plaintext + 17 bytes). Empty plaintexts are
keepalives and are dropped on receipt (5.4).

    stream = SecretStream(is_initiator=True, static_keypair=kp)
    sock.send(stream.initiate())                  # msg1 (b"" for the responder)
    for event in stream.receive_data(chunk):     # HandshakeDone, Message(plaintext)
        ...
    sock.send(stream.data_to_send())              # after every receive_data: handshake replies
    sock.send(stream.send(b"hello"))              # once HandshakeDone arrived

Any protocol violation raises a `WireError` subclass with a one-line reason; the stream is
then dead and every later call raises too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from nacl._sodium import ffi, lib  # PyNaCl's cffi binding of libsodium

from hyperpi.hypercore.keys import KeyPair, namespace

from .errors import FrameError, HandshakeError, WireError
from .noise import NoiseXX

# Largest frame payload: the uint24 length prefix cannot say more, and Node's secret-stream
# refuses to write more (MAX_ATOMIC_WRITE = 2^24 - 1) while it allocates up to that much for
# one incoming frame. One hypercore block travels in one frame, so this is also the largest
# block a peer can send. A device short of memory can pass a lower `max_frame_size`.
MAX_FRAME_SIZE = 2**24 - 1
# Largest frame before the secretstream is set up: the XX messages with empty payloads are
# 32, 96 and 64 bytes and the header is 56, so a bigger length prefix is hostile; refusing it
# early stops a stranger from making us buffer 16 MiB before authenticating. (Node only
# applies Noise's 65,535-byte cap, after buffering.)
MAX_SETUP_FRAME = 1024
# Scratch buffer kept for encrypting and decrypting; a bigger message gets a buffer of its own
# that is freed with it, so one 16 MiB frame does not pin 16 MiB for the connection's life.
SCRATCH_BYTES = 4096

HEADER_BYTES = 24  # crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES = 17  # 1 encrypted tag byte + 16-byte MAC per message
ID_HEADER_BYTES = 32 + HEADER_BYTES
TAG_MESSAGE = 0


NS_INITIATOR, NS_RESPONDER, NS_SEND = namespace("hyperswarm/secret-stream", 3)


def stream_id(handshake_hash: bytes, is_initiator: bool) -> bytes:
    """The 32-byte id a side puts before its secretstream header (5.3)."""
    ns = NS_INITIATOR if is_initiator else NS_RESPONDER
    return hashlib.blake2b(ns, digest_size=32, key=handshake_hash).digest()


class _Push:
    """libsodium secretstream encryption, framed. Calls PyNaCl's cffi `lib` directly: its
    Python wrapper spends 4x the cipher's own time on argument checks, and a large sync
    pushes one message per block."""

    def __init__(self, key: bytes) -> None:
        self._state = ffi.new("unsigned char[]", lib.crypto_secretstream_xchacha20poly1305_statebytes())
        header = ffi.new("unsigned char[]", HEADER_BYTES)
        if lib.crypto_secretstream_xchacha20poly1305_init_push(self._state, header, key) != 0:
            raise RuntimeError("secretstream init_push failed")
        self.header = ffi.buffer(header)[:]
        self._buf = ffi.new("unsigned char[]", SCRATCH_BYTES)

    def push_framed(self, plaintext: bytes) -> bytes:
        """`uint24le(len) || ciphertext` of one message with TAG_MESSAGE."""
        clen = len(plaintext) + ABYTES
        buf = self._buf if len(self._buf) >= clen + 3 else ffi.new("unsigned char[]", clen + 3)
        lib.crypto_secretstream_xchacha20poly1305_push(
            self._state, buf + 3, ffi.NULL, plaintext, len(plaintext), ffi.NULL, 0, TAG_MESSAGE
        )
        buf[0:3] = clen.to_bytes(3, "little")
        return ffi.buffer(buf, clen + 3)[:]


class _Pull:
    """libsodium secretstream decryption (see `_Push` for why it calls `lib` directly)."""

    def __init__(self, header: bytes, key: bytes) -> None:
        self._state = ffi.new("unsigned char[]", lib.crypto_secretstream_xchacha20poly1305_statebytes())
        if lib.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key) != 0:
            raise HandshakeError("invalid secretstream header")
        self._tag = ffi.new("unsigned char *")
        self._buf = ffi.new("unsigned char[]", SCRATCH_BYTES)

    def pull(self, ciphertext: bytes | memoryview) -> bytes | None:
        """The plaintext, or None when the message fails authentication."""
        if len(ciphertext) < ABYTES:
            return None
        mlen = len(ciphertext) - ABYTES
        buf = self._buf if len(self._buf) >= mlen + 1 else ffi.new("unsigned char[]", mlen + 1)
        rc = lib.crypto_secretstream_xchacha20poly1305_pull(
            self._state, buf, ffi.NULL, self._tag, ffi.from_buffer(ciphertext), len(ciphertext), ffi.NULL, 0
        )
        # The tag is not enforced, as in Node: TAG_FINAL only marks an end it never sends.
        return ffi.buffer(buf, mlen)[:] if rc == 0 else None


def frame(payload: bytes) -> bytes:
    """`uint24le(len) || payload`."""
    if len(payload) > MAX_FRAME_SIZE:
        raise ValueError(f"frame of {len(payload)} bytes is above {MAX_FRAME_SIZE}")
    return len(payload).to_bytes(3, "little") + payload


@dataclass(frozen=True)
class HandshakeDone:
    """Noise finished: messages may now be sent. The remote's own header may still be in flight."""

    remote_public_key: bytes
    handshake_hash: bytes


@dataclass(frozen=True)
class Message:
    """One decrypted, non-empty plaintext (for hypercore: one protomux frame)."""

    plaintext: bytes


Event = HandshakeDone | Message

# Stream phases.
_HANDSHAKE, _HEADER, _OPEN, _FAILED = range(4)


class SecretStream:
    """One encrypted connection's protocol state: bytes in, events and bytes out."""

    def __init__(
        self,
        is_initiator: bool,
        static_keypair: KeyPair,
        *,
        ephemeral_keypair: KeyPair | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        if not 0 < max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be 1..{MAX_FRAME_SIZE}")
        self.is_initiator = is_initiator
        self.public_key = static_keypair.public_key
        self.max_frame_size = max_frame_size
        self._noise: NoiseXX | None = NoiseXX(is_initiator, static_keypair, ephemeral_keypair)
        self._phase = _HANDSHAKE
        self._inbuf = bytearray()  # < 3 + max frame size: complete frames are consumed at once
        self._outbuf = bytearray()
        self._started = False
        self._push: _Push | None = None
        self._pull: _Pull | None = None
        self._rx = b""
        self.handshake_hash: bytes | None = None
        self.remote_public_key: bytes | None = None
        self.tx_header: bytes | None = None  # our secretstream header, for transcripts and tests

    @property
    def handshake_complete(self) -> bool:
        return self.handshake_hash is not None

    @property
    def buffered_bytes(self) -> int:
        """Bytes the frame being received will hold once complete (its announced length), or
        what is buffered: the memory this stream is committed to for the remote."""
        buf = self._inbuf
        if len(buf) < 3:
            return len(buf)
        return max(len(buf), 3 + (buf[0] | buf[1] << 8 | buf[2] << 16))

    # --- outgoing ---

    def initiate(self) -> bytes:
        """Start the handshake; returns the bytes to write first (empty for the responder)."""
        if self._started:
            raise RuntimeError("initiate() called twice")
        self._started = True
        if self.is_initiator:
            assert self._noise is not None
            self._outbuf += frame(self._noise.send())
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Handshake and header bytes produced by `receive_data`; write them out."""
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def send(self, plaintext: bytes) -> bytes:
        """Encrypt one message; returns its frame. Only after HandshakeDone."""
        if self._push is None:
            raise RuntimeError("send() before the handshake completed")
        if len(plaintext) + ABYTES > MAX_FRAME_SIZE:
            raise ValueError(f"message of {len(plaintext)} bytes does not fit one frame")
        return self._push.push_framed(bytes(plaintext))

    def keepalive(self) -> bytes:
        """An empty message: Node sends one after 5 s without writing, and drops them on receipt."""
        return self.send(b"")

    # --- incoming ---

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the transport; returns the events they complete."""
        if self._phase == _FAILED:
            raise FrameError("stream already failed")
        if not self._started:
            self.initiate()  # a responder may skip initiate(); its output is empty anyway
        events: list[Event] = []
        buf = self._inbuf
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 3:
                n = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
                limit = self.max_frame_size if self._phase == _OPEN else MAX_SETUP_FRAME
                if n > limit:
                    raise FrameError(f"frame length {n} is above the limit of {limit}")
                if n == 0:
                    raise FrameError("zero-length frame")
                if len(buf) - pos - 3 < n:
                    break
                start = pos + 3
                pos += 3 + n
                if self._phase == _OPEN:  # the hot path, inlined
                    # Decrypted in place of a copy: a 16 MiB frame is not held twice more.
                    with memoryview(buf) as view, view[start:pos] as payload:
                        plaintext = self._pull.pull(payload)  # type: ignore[union-attr]
                    if plaintext is None:
                        raise FrameError("message failed authentication (bad MAC or out of order)")
                    if plaintext:  # empty plaintexts are keepalives
                        events.append(Message(plaintext))
                elif self._phase == _HANDSHAKE:
                    self._on_handshake(bytes(buf[start:pos]), events)
                else:
                    self._on_header(bytes(buf[start:pos]))
        except WireError:
            self._fail()
            raise
        if pos == len(buf):
            buf.clear()  # frees the storage a big frame grew it to
        else:
            del buf[:pos]
        return events

    def close(self) -> None:
        """The connection is gone: free the buffers; every later call raises."""
        self._fail()

    def _fail(self) -> None:
        self._phase = _FAILED
        self._inbuf = bytearray()
        self._noise = None

    def _on_handshake(self, payload: bytes, events: list[Event]) -> None:
        noise = self._noise
        assert noise is not None
        noise.recv(payload)  # raises HandshakeError
        if noise.my_turn():
            self._outbuf += frame(noise.send())
        if noise.complete:
            self._setup(noise, events)

    def _setup(self, noise: NoiseXX, events: list[Event]) -> None:
        self.handshake_hash = noise.handshake_hash
        self.remote_public_key = noise.remote_public_key
        self._rx = noise.rx
        self._push = _Push(noise.tx)
        self.tx_header = self._push.header
        self._outbuf += frame(stream_id(noise.handshake_hash, self.is_initiator) + self.tx_header)
        self._noise = None
        self._phase = _HEADER
        assert self.remote_public_key is not None
        events.append(HandshakeDone(self.remote_public_key, self.handshake_hash))

    def _on_header(self, payload: bytes) -> None:
        if len(payload) != ID_HEADER_BYTES:
            raise HandshakeError(f"invalid header message: {len(payload)} bytes, expected {ID_HEADER_BYTES}")
        assert self.handshake_hash is not None
        if payload[:32] != stream_id(self.handshake_hash, not self.is_initiator):
            raise HandshakeError("invalid header: wrong stream id")
        self._pull = _Pull(payload[32:], self._rx)
        self._phase = _OPEN
