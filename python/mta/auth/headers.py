"""Message-ID and Date for submitted mail that lacks them (RFC 6409 section 8)."""

from __future__ import annotations

import email.utils
import re
import secrets
import time

_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def _field_names(header_block: bytes) -> set[bytes]:
    names = set()
    for line in header_block.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            continue  # a continuation line
        if m := _FIELD_NAME.match(line):
            names.add(m[1].lower())
    return names


def add_missing_headers(header_block: bytes, *, hostname: str, now: float | None = None) -> bytes:
    """Fields to prepend to a submitted message whose header block (the client's
    bytes up to the empty line) lacks them: `Message-ID: <YYYYmmddHHMMSS.<16 hex>@hostname>`
    and `Date:` (RFC 5322, local zone). Field names match case-insensitively.
    Returns b"" when both are present."""
    names = _field_names(header_block)
    now = time.time() if now is None else now
    out = []
    if b"message-id" not in names:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        out.append(f"Message-ID: <{stamp}.{secrets.token_hex(8)}@{hostname}>\r\n")
    if b"date" not in names:
        out.append(f"Date: {email.utils.formatdate(now, localtime=True)}\r\n")
    return "".join(out).encode("ascii")
