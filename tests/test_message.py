"""received_header and the header scanner behind Message (any chunking)."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta._native import Message, received_header

DATE = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d [+-]\d{4}"

BASE = dict(
    helo="client.example.test", reverse_name="mail.example.test", ip="192.0.2.7",
    hostname="mx.example.test", protocol="ESMTP", queue_id="0abcDEF", recipient="bob@example.test",
    timestamp=1_795_870_669.9,
)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({}, r"Received: from client\.example\.test \(mail\.example\.test \[192\.0\.2\.7\]\)\r\n"
             r"\tby mx\.example\.test with ESMTP id 0abcDEF\r\n\tfor <bob@example\.test>; " + DATE + r"\r\n"),
        ({"recipient": None, "reverse_name": None, "ip": "2001:db8::1"},
         r"Received: from client\.example\.test \(unknown \[IPv6:2001:db8::1\]\)\r\n"
         r"\tby mx\.example\.test with ESMTP id 0abcDEF;? ?(\r\n\t)?" + DATE + r"\r\n"),
        ({"tls": "TLSv1.3 TLS_AES_256_GCM_SHA384", "protocol": "ESMTPS"},
         r"Received: from .*\r\n\tby mx\.example\.test \(using TLSv1\.3 with cipher TLS_AES_256_GCM_SHA384\)"
         r"\r\n\twith ESMTPS id 0abcDEF\r\n\tfor <bob@example\.test>; " + DATE + r"\r\n"),
    ],
)
def test_received_header(changes, pattern):
    h = received_header(**{**BASE, **changes}).decode()
    assert re.fullmatch(pattern, h), h
    assert all(len(line) <= 78 for line in h.split("\r\n"))


def test_received_header_is_injection_safe():
    h = received_header(**{**BASE, "helo": "x\r\nBcc: victim@example.test"})
    assert h.count(b"\r\n") == 3 and b"\r\nBcc" not in h


def test_received_date_in_local_zone():
    import time

    h = received_header(**BASE).decode()
    off = re.search(r"([+-])(\d\d)(\d\d)\r\n$", h)
    secs = (int(off[2]) * 3600 + int(off[3]) * 60) * (1 if off[1] == "+" else -1)
    assert secs == time.localtime(1_795_870_669).tm_gmtoff


# (message, max_header_size, header_size, received_count, header_too_big)
SCANNER_CASES = [
    (b"Subject: x\r\n\r\nbody\r\n", 1000, 12, 0, False),
    (b"Received: a\r\n\tb\r\nreceived : c\r\nX-Received: d\r\n\r\n", 1000, 46, 2, False),
    (b"Received: a\r\n\r\nReceived: in the body\r\n", 1000, 13, 1, False),
    (b"no header line\r\nReceived: x\r\n", 1000, 0, 0, False),
    (b"Subject: " + b"x" * 2000 + b"\r\n\r\n", 1000, 1001, 0, True),
]


@pytest.mark.parametrize("data, limit, size, received, too_big", SCANNER_CASES)
def test_scanner_table(data, limit, size, received, too_big):
    for chunk in (1, 3, 64, len(data)):
        m = Message(max_header_size=limit)
        for k in range(0, len(data), chunk):
            m.push(data[k : k + chunk])
        assert (m.header_size, m.received_count, m.header_too_big) == (size, received, too_big)
        assert m.size == len(data) and m.bytes() == data and not m.spilled


@given(st.lists(st.integers(1, 40), max_size=30), st.integers(0, 6))
def test_scanner_any_chunking(cuts, n_received):
    data = b"".join(
        [b"Received: from h%d\r\n\tby x\r\n" % i for i in range(n_received)]
        + [b"Subject: s\r\n\r\nReceived: body\r\n"]
    )
    m = Message()
    pos = 0
    for c in cuts:
        m.push(data[pos : pos + c])
        pos += c
    m.push(data[pos:])
    assert m.received_count == n_received
    assert m.header_size == len(data) - len(b"\r\nReceived: body\r\n")
