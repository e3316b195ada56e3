"""The PROXY protocol parser through the binding: every documented form, and
(hypothesis) the same outcome and rest for every split of the input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta import _native

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_inet(src, sport, dst, dport, tlv=b""):
    return v2(1, 0x11, ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
              + struct.pack("!HH", sport, dport) + tlv)


def v2_inet6(src, sport, dst, dport, tlv=b""):
    return v2(1, 0x21, ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
              + struct.pack("!HH", sport, dport) + tlv)


def outcome(chunks):
    p = _native.ProxyParser()
    res = None
    for c in chunks:
        try:
            res = p.feed(c)
        except ValueError as e:
            return ("error", str(e)), b""
    return res, p.rest


CASES = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 25\r\n", ("proxy", "192.0.2.1", 40000, "198.51.100.7", 25)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::25 1234 587\r\n", ("proxy", "2001:db8::1", 1234, "2001:db8::25", 587)),
    (b"PROXY UNKNOWN\r\n", ("local",)),
    (b"PROXY UNKNOWN whatever 1 2\r\n", ("local",)),
    (v2_inet("192.0.2.1", 40000, "198.51.100.7", 25), ("proxy", "192.0.2.1", 40000, "198.51.100.7", 25)),
    (v2_inet("192.0.2.1", 1, "198.51.100.7", 2, tlv=b"\x01\x00\x04smtp"), ("proxy", "192.0.2.1", 1, "198.51.100.7", 2)),
    (v2_inet6("2001:db8::1", 1234, "2001:db8::25", 587), ("proxy", "2001:db8::1", 1234, "2001:db8::25", 587)),
    (v2(0, 0x00, b""), ("local",)),
    (v2(1, 0x00, b""), ("local",)),
]

BAD = [
    b"EHLO x\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWN " + b"x" * 200,
    v2(2, 0x11, b"\0" * 12),
    v2(1, 0x31, b"\0" * 216),
    v2(1, 0x11, b"\0" * 11),
    SIG[:6] + b"X",
]


@pytest.mark.parametrize("data,want", CASES)
def test_forms(data, want):
    assert outcome([data]) == (want, b"")
    assert outcome([data + b"EHLO x\r\n"]) == (want, b"EHLO x\r\n")
    for cut in range(len(data)):
        assert _native.ProxyParser().feed(data[:cut]) is None


@pytest.mark.parametrize("data", BAD)
def test_bad_headers_raise(data):
    res, _ = outcome([data])
    assert res[0] == "error", res


def test_decided_outcome_is_sticky():
    p = _native.ProxyParser()
    assert p.feed(b"PROXY UNKNOWN\r\nab") == ("local",)
    assert p.feed(b"cd") == ("local",)
    assert p.rest == b"abcd"
    bad = _native.ProxyParser()
    with pytest.raises(ValueError):
        bad.feed(b"GET / HTTP/1.0\r\n")
    with pytest.raises(ValueError):
        bad.feed(b"more")


def mutate(data: bytes, pos: int, byte: int) -> bytes:
    if not data:
        return data
    i = pos % len(data)
    return data[:i] + bytes([byte]) + data[i + 1:]


inputs = st.one_of(
    st.sampled_from([c for c, _ in CASES] + BAD),
    st.binary(max_size=120),
    st.tuples(st.sampled_from([c for c, _ in CASES]), st.integers(0, 200), st.integers(0, 255)).map(
        lambda t: mutate(*t)),
).flatmap(lambda d: st.tuples(st.just(d), st.binary(max_size=20)))


@settings(max_examples=400, deadline=None)
@given(inputs, st.lists(st.integers(0, 300), max_size=6))
def test_same_result_for_every_split(data_tail, cuts):
    data = data_tail[0] + data_tail[1]
    whole = outcome([data])
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in points + [len(data)]:
        chunks.append(data[prev:p])
        prev = p
    assert outcome(chunks) == whole
    assert outcome([data[i:i + 1] for i in range(len(data))] or [b""]) == whole
