"""Benchmark messages of exactly `size` bytes, carrying `X-Bench-Checksum: crc32=HEX;
len=N` over the body so a sink behind any relay can tell a corrupted body from a good
one. No body line starts with "." (no dot-stuffing on the wire)."""

from __future__ import annotations

import time
import zlib
from email.utils import formatdate

CHECKSUM_HEADER = b"X-Bench-Checksum:"
_LINE = 76  # body line length before CRLF, as mail tools wrap
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _body(length: int, seed: int) -> bytes:
    """`length` bytes of CRLF-terminated lines, different for every seed."""
    if length < 3:  # no room for a line and its CRLF
        return b""
    out = bytearray()
    n = len(_ALPHABET)
    i = seed
    while len(out) < length:
        room = length - len(out)
        if room <= 2:  # a short tail: lengthen the previous line instead of an empty one
            out[-2:-2] = b"x" * room
            break
        k = min(_LINE, room - 2)
        out += bytes(_ALPHABET[(i + j * 7) % n] for j in range(k)) + b"\r\n"
        i += 13
    return bytes(out)


def build_message(size: int, sender: str, to: str, seed: int, helo: str = "bench.example.test") -> bytes:
    """One complete message of `size` bytes (or the bare headers if `size` is smaller)."""
    date = formatdate(time.time(), localtime=False)
    head = (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: mta bench {seed}\r\nDate: {date}\r\n"
        f"Message-ID: <bench.{seed}.{int(time.time() * 1000)}@{helo}>\r\n"
    ).encode()
    # The checksum header's own length is fixed (8 hex digits, len padded to 10 digits).
    ck_len = len(CHECKSUM_HEADER) + len(b" crc32=00000000; len=0000000000\r\n")
    body_len = max(0, size - len(head) - ck_len - 2)
    body = _body(body_len, seed)
    ck = CHECKSUM_HEADER + b" crc32=%08x; len=%010d\r\n" % (zlib.crc32(body), len(body))
    return head + ck + b"\r\n" + body


def unstuff(data: bytes) -> bytes:
    """DATA transparency (RFC 5321 4.5.2) undone: a leading '.' removed from each line."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n..", b"\r\n.")


def verify(message: bytes) -> bool | None:
    """True if the checksum header matches the body, False if not, None if there is none."""
    hdr_end = message.find(b"\r\n\r\n")
    head = message if hdr_end < 0 else message[:hdr_end + 2]
    pos = head.find(CHECKSUM_HEADER)
    if pos < 0 or (pos > 0 and head[pos - 1] != 0x0A):
        return None
    if hdr_end < 0:
        return False
    try:
        line = head[pos + len(CHECKSUM_HEADER):head.index(b"\r\n", pos)]
        fields = dict(f.strip().split(b"=", 1) for f in line.split(b";"))
        crc, length = int(fields[b"crc32"], 16), int(fields[b"len"])
    except (ValueError, KeyError):
        return False
    body = message[hdr_end + 4:]
    return len(body) == length and zlib.crc32(body) == crc
