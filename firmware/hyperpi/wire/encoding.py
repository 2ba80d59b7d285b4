"""compact-encoding: the byte codecs of the Hypercore wire protocol (Holepunch `compact-encoding`).

Each codec is an encode/decode pair: `encode(out: bytearray, value)` appends the value's bytes,
`decode(state: State) -> value` reads them from `state.buffer[state.start:state.end]` and moves
`state.start` forward. All integers are little-endian. Decoders raise `DecodeError` (a
`WireError`) on truncated or oversized input and never any other exception, so a hostile
peer's bytes cannot crash the caller. Like Node, decoders ignore trailing bytes: newer peers
append optional fields at the end of a message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from .errors import DecodeError

T = TypeVar("T")

# Largest integer a `uint` may carry. Node decodes numbers into JS doubles and throws above
# 2^53 - 1 (`validateSafeUint`); rejecting the same values keeps both sides in agreement.
MAX_SAFE_UINT = 2**53 - 1
# Largest element count `array` accepts: Node's `array` decoder throws "Array is too big"
# above 0x100000 (1,048,576). It stops a 5-byte count from making us loop a million times
# over an empty buffer or preallocate for it.
MAX_ARRAY_LENGTH = 0x100000


class State:
    """A read cursor over a buffer: `buffer[start:end]` is what is left to decode."""

    __slots__ = ("buffer", "start", "end")

    def __init__(self, buffer: bytes, start: int = 0, end: int | None = None) -> None:
        self.buffer = bytes(buffer)
        self.start = start
        self.end = len(self.buffer) if end is None else end

    def remaining(self) -> int:
        return self.end - self.start


class Codec(NamedTuple, Generic[T]):
    """An encode/decode pair."""

    encode: Callable[[bytearray, Any], None]
    decode: Callable[[State], Any]


def encode(codec: Codec, value: Any) -> bytes:
    """Encode one value to bytes."""
    out = bytearray()
    codec.encode(out, value)
    return bytes(out)


def decode(codec: Codec, data: bytes) -> Any:
    """Decode one value from the start of `data` (trailing bytes are ignored, as in Node)."""
    return codec.decode(State(data))


def _take(state: State, n: int) -> bytes:
    start = state.start
    if n < 0 or state.end - start < n:
        raise DecodeError(f"truncated: needed {n} bytes, {state.end - start} left")
    state.start = start + n
    return state.buffer[start : start + n]


# --- integers -----------------------------------------------------------------------------


def _check_uint(n: int, limit: int) -> None:
    if not isinstance(n, int) or n < 0 or n > limit:
        raise ValueError(f"{n!r} is not an unsigned integer up to {limit}")


def encode_uint(out: bytearray, n: int) -> None:
    if 0 <= n <= 0xFC:
        out.append(n)
        return
    _check_uint(n, MAX_SAFE_UINT)
    if n <= 0xFFFF:
        out.append(0xFD)
        out += n.to_bytes(2, "little")
    elif n <= 0xFFFFFFFF:
        out.append(0xFE)
        out += n.to_bytes(4, "little")
    else:
        out.append(0xFF)
        out += n.to_bytes(8, "little")


def decode_uint(state: State) -> int:
    start = state.start
    if start >= state.end:
        raise DecodeError("truncated: expected a uint")
    a = state.buffer[start]
    if a <= 0xFC:
        state.start = start + 1
        return a
    state.start = start + 1
    width = 2 if a == 0xFD else 4 if a == 0xFE else 8
    n = int.from_bytes(_take(state, width), "little")
    if n > MAX_SAFE_UINT:
        raise DecodeError(f"uint {n} is above 2^53-1")
    return n


uint = Codec(encode_uint, decode_uint)


def uint_at(buffer: bytes, pos: int, end: int) -> tuple[int, int]:
    """`decode_uint` without a State, for hot decoders: (value, position after it)."""
    if pos >= end:
        raise DecodeError("truncated: expected a uint")
    a = buffer[pos]
    if a <= 0xFC:
        return a, pos + 1
    width = 2 if a == 0xFD else 4 if a == 0xFE else 8
    if end - pos - 1 < width:
        raise DecodeError(f"truncated: needed {width} bytes, {end - pos - 1} left")
    n = int.from_bytes(buffer[pos + 1 : pos + 1 + width], "little")
    if n > MAX_SAFE_UINT:
        raise DecodeError(f"uint {n} is above 2^53-1")
    return n, pos + 1 + width


def uint_bytes(n: int) -> bytes:
    """`encode_uint` of one number, as bytes."""
    if 0 <= n <= 0xFC:
        return _SMALL[n]
    _check_uint(n, MAX_SAFE_UINT)
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


_SMALL = [bytes((n,)) for n in range(0xFD)]


def encode_uint64(out: bytearray, n: int) -> None:
    _check_uint(n, 2**64 - 1)
    out += n.to_bytes(8, "little")


def decode_uint64(state: State) -> int:
    return int.from_bytes(_take(state, 8), "little")


uint64 = Codec(encode_uint64, decode_uint64)


def encode_uint32(out: bytearray, n: int) -> None:
    _check_uint(n, 0xFFFFFFFF)
    out += n.to_bytes(4, "little")


def decode_uint32(state: State) -> int:
    return int.from_bytes(_take(state, 4), "little")


uint32 = Codec(encode_uint32, decode_uint32)


# --- bytes --------------------------------------------------------------------------------


def _fixed(size: int) -> Codec:
    def enc(out: bytearray, b: bytes) -> None:
        if len(b) != size:
            raise ValueError(f"expected {size} bytes, got {len(b)}")
        out += b

    def dec(state: State) -> bytes:
        return _take(state, size)

    return Codec(enc, dec)


fixed32 = _fixed(32)
fixed64 = _fixed(64)


def encode_buffer(out: bytearray, b: bytes) -> None:
    encode_uint(out, len(b))
    out += b


def decode_buffer(state: State) -> bytes:
    return _take(state, decode_uint(state))


buffer = Codec(encode_buffer, decode_buffer)


def encode_optional_buffer(out: bytearray, b: bytes | None) -> None:
    encode_buffer(out, b or b"")


def decode_optional_buffer(state: State) -> bytes | None:
    """A zero length decodes as None: Node does not tell "absent" from "empty"."""
    b = decode_buffer(state)
    return b if b else None


optional_buffer = Codec(encode_optional_buffer, decode_optional_buffer)


def encode_string(out: bytearray, s: str) -> None:
    encode_buffer(out, s.encode("utf-8"))


def decode_string(state: State) -> str:
    # Node decodes invalid UTF-8 with replacement characters instead of failing; so do we.
    return decode_buffer(state).decode("utf-8", errors="replace")


string = Codec(encode_string, decode_string)


def encode_raw(out: bytearray, b: bytes) -> None:
    out += b


def decode_raw(state: State) -> bytes:
    """The rest of the enclosing message, no length prefix."""
    return _take(state, state.end - state.start)


raw = Codec(encode_raw, decode_raw)


# --- containers ---------------------------------------------------------------------------


def array(item: Codec) -> Codec:
    """`uint` count, then the items; the decoder rejects counts above MAX_ARRAY_LENGTH."""

    def enc(out: bytearray, values: list) -> None:
        encode_uint(out, len(values))
        for v in values:
            item.encode(out, v)

    def dec(state: State) -> list:
        n = decode_uint(state)
        if n > MAX_ARRAY_LENGTH:
            raise DecodeError(f"array of {n} items is above the limit of {MAX_ARRAY_LENGTH}")
        return [item.decode(state) for _ in range(n)]

    return Codec(enc, dec)


def encode_uint32array(out: bytearray, words: list[int]) -> None:
    encode_uint(out, len(words))
    for w in words:
        encode_uint32(out, w)


def decode_uint32array(state: State) -> list[int]:
    n = decode_uint(state)
    data = _take(state, 4 * n)  # bounded by the message itself, so no separate count limit
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, 4 * n, 4)]


uint32array = Codec(encode_uint32array, decode_uint32array)
