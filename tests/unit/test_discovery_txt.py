"""Topics in the DNS-SD TXT record: raw 32-byte discovery keys survive zeroconf's encoding.

No sockets: records go through python-zeroconf's own DNS packet writer and parser.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import DNSIncoming, DNSOutgoing, DNSText, ServiceInfo
from zeroconf.const import _FLAGS_AA, _FLAGS_QR_RESPONSE

from hyperpi.net.discovery import (
    MAX_TOPICS,
    SERVICE_TYPE,
    TOPIC_SIZE,
    DiscoveryError,
    decode_topics,
    encode_topics,
    instance_name,
)

topics_strategy = st.sets(st.binary(min_size=TOPIC_SIZE, max_size=TOPIC_SIZE), max_size=MAX_TOPICS)


def through_the_wire(properties: dict[bytes, bytes]) -> dict[bytes, bytes | None]:
    """Publish properties in a TXT record, send it as a DNS packet, and parse it back."""
    sent = ServiceInfo(SERVICE_TYPE, f"peer.{SERVICE_TYPE}", port=1, properties=properties)
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    out.add_answer_at_time(sent.dns_text(), 0)
    (packet,) = out.packets()
    (record,) = DNSIncoming(packet).answers()
    assert isinstance(record, DNSText)
    received = ServiceInfo(SERVICE_TYPE, f"peer.{SERVICE_TYPE}", properties=record.text)
    return received.properties


@settings(max_examples=60, deadline=None)
@given(topics_strategy)
def test_topics_round_trip_through_a_dns_packet(topics: set[bytes]) -> None:
    assert decode_topics(through_the_wire(encode_topics(topics))) == topics


def test_awkward_bytes_survive() -> None:
    # "=" separates key and value, NUL ends C strings, 0xff is not UTF-8
    awkward = {b"=" * 32, b"\x00" * 32, b"\xff" * 32, b"t0=" + bytes(29)}
    assert decode_topics(through_the_wire(encode_topics(awkward))) == awkward


def test_full_record_fits_the_rfc6763_advice() -> None:
    topics = {hashlib.blake2b(bytes([i]), digest_size=32).digest() for i in range(MAX_TOPICS)}
    sent = ServiceInfo(SERVICE_TYPE, f"peer.{SERVICE_TYPE}", port=1, properties=encode_topics(topics))
    assert len(sent.text) <= 1300
    assert decode_topics(sent.properties) == topics


def test_encoding_is_stable_and_numbered() -> None:
    one, two = b"\x02" * 32, b"\x01" * 32
    assert encode_topics([one, two]) == {b"t0": two, b"t1": one}
    assert encode_topics([two, one, one]) == encode_topics({one, two})
    assert encode_topics([]) == {}


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64])
def test_wrong_size_topic_is_refused(bad: bytes) -> None:
    with pytest.raises(DiscoveryError, match="32-byte discovery key"):
        encode_topics([b"\x00" * 32, bad])


def test_too_many_topics_are_refused() -> None:
    topics = [i.to_bytes(32, "big") for i in range(MAX_TOPICS + 1)]
    with pytest.raises(DiscoveryError, match=f"at most {MAX_TOPICS} topics"):
        encode_topics(topics)


def test_malformed_entries_from_other_peers_are_ignored() -> None:
    good = b"\x07" * 32
    properties: dict[bytes, bytes | None] = {
        b"t0": good,
        b"t1": b"short",  # wrong length
        b"t2": None,  # boolean attribute, no value
        b"x0": b"\x08" * 32,  # not a topic key
        b"tx": b"\x09" * 32,  # not numbered
        b"t10000": b"\x0a" * 32,  # more digits than any record can hold
    }
    assert decode_topics(properties) == {good}


def test_instance_name_is_stable_distinct_and_a_valid_label() -> None:
    key_1, key_2 = b"\x01" * 32, b"\x02" * 32
    assert instance_name("kitchen", key_1) == instance_name("kitchen", key_1)
    assert instance_name("kitchen", key_1) != instance_name("kitchen", key_2)
    assert instance_name("kitchen", key_1).startswith("kitchen-")
    odd = instance_name("Ana's  phone.local / é" + "x" * 80, key_1)
    assert len(odd.encode()) <= 63
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in odd)
    assert instance_name("...", key_1).startswith("hyperpi-")
    # and zeroconf accepts it as a service instance name
    ServiceInfo(SERVICE_TYPE, f"{odd}.{SERVICE_TYPE}", port=1)
