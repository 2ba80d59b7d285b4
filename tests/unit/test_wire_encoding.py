"""compact-encoding: Node's vectors byte for byte, round-trip properties, and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperpi.wire import encoding as ce
from hyperpi.wire.errors import DecodeError, WireError

CODECS = {
    "uint": ce.uint,
    "uint64 (fixed 8 bytes LE)": ce.uint64,
    "string": ce.string,
    "buffer": ce.buffer,
    "optionalBuffer": ce.optional_buffer,
    "uint32array": ce.uint32array,
}


def _value(enc: str, value):
    if enc in ("buffer", "optionalBuffer") and value is not None:
        return bytes.fromhex(value)
    return value


def test_every_compact_encoding_vector(vectors: dict) -> None:
    assert len(vectors["compact_encoding"]) == 14
    for v in vectors["compact_encoding"]:
        codec = CODECS[v["enc"]]
        value = _value(v["enc"], v["value"])
        data = bytes.fromhex(v["encoded"])
        assert ce.encode(codec, value) == data, v
        assert ce.decode(codec, data) == value, v


def test_uint_decodes_non_minimal_forms_as_node_does() -> None:
    assert ce.decode(ce.uint, bytes.fromhex("fd0100")) == 1
    assert ce.decode(ce.uint, bytes.fromhex("fe01000000")) == 1


def test_uint_above_2_53_is_refused() -> None:
    with pytest.raises(DecodeError, match="2\\^53"):
        ce.decode(ce.uint, bytes.fromhex("ff0000000000002000"))
    with pytest.raises(ValueError):
        ce.encode(ce.uint, 2**53)


def test_array_count_limit() -> None:
    arr = ce.array(ce.uint)
    data = ce.encode(ce.uint, ce.MAX_ARRAY_LENGTH + 1)
    with pytest.raises(DecodeError, match="limit"):
        ce.decode(arr, data)


@pytest.mark.parametrize("codec", [ce.uint, ce.buffer, ce.string, ce.fixed32, ce.fixed64, ce.uint32array, ce.uint64])
def test_truncated_input_raises_decode_error(codec: ce.Codec) -> None:
    with pytest.raises(DecodeError):
        ce.decode(codec, b"")
    with pytest.raises(DecodeError):
        ce.decode(codec, b"\xfe\xff")


uints = st.integers(min_value=0, max_value=ce.MAX_SAFE_UINT)


@given(uints)
def test_uint_round_trip(n: int) -> None:
    assert ce.decode(ce.uint, ce.encode(ce.uint, n)) == n


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_uint64_round_trip(n: int) -> None:
    data = ce.encode(ce.uint64, n)
    assert len(data) == 8 and ce.decode(ce.uint64, data) == n


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
def test_fixed_round_trip(a: bytes, b: bytes) -> None:
    assert ce.decode(ce.fixed32, ce.encode(ce.fixed32, a)) == a
    assert ce.decode(ce.fixed64, ce.encode(ce.fixed64, b)) == b


@given(st.binary(max_size=300))
def test_buffer_and_raw_round_trip(b: bytes) -> None:
    assert ce.decode(ce.buffer, ce.encode(ce.buffer, b)) == b
    assert ce.decode(ce.raw, ce.encode(ce.raw, b)) == b
    assert ce.decode(ce.optional_buffer, ce.encode(ce.optional_buffer, b)) == (b or None)


@given(st.text(max_size=100))
def test_string_round_trip(s: str) -> None:
    assert ce.decode(ce.string, ce.encode(ce.string, s)) == s


@given(st.lists(uints, max_size=50))
def test_array_round_trip(values: list[int]) -> None:
    codec = ce.array(ce.uint)
    assert ce.decode(codec, ce.encode(codec, values)) == values


@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=50))
def test_uint32array_round_trip(words: list[int]) -> None:
    assert ce.decode(ce.uint32array, ce.encode(ce.uint32array, words)) == words


@given(st.binary(max_size=64))
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    for codec in [*CODECS.values(), ce.fixed32, ce.array(ce.string), ce.raw]:
        try:
            ce.decode(codec, data)
        except WireError:
            pass
