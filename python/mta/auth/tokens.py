"""The HTTP API's token file: `name:scopes:senders:sha256:<hex>` per line, # comments, mode 0600;
read by the server, edited by `mta http token`. Invariants: a token is shown once, at creation,
and only its SHA-256 is stored; a presented token is compared with every entry in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass

from mta.auth.users import WatchedFile, drop_line, put_line

log = logging.getLogger("mta.auth")

SCOPES = ("inject", "admin")
PREFIX = "mta_"  # tokens are recognisable in a leaked config or log (and by secret scanners)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_SENDER_RE = re.compile(r"@?[^\s,:@]+(?:@[^\s,:@]+)?")


def valid_token_name(name: str) -> bool:
    """1..64 characters: letters, digits and . _ @ -, starting with a letter or digit."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def parse_senders(text: str) -> tuple[str, ...]:
    """`--senders ADDR|@DOMAIN,...` -> lower-cased entries; ValueError naming a bad one.
    Empty means any sender."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if not _SENDER_RE.fullmatch(item) or (not item.startswith("@") and "@" not in item):
            raise ValueError(f"{item!r} is neither an address (user@domain) nor @domain")
        out.append(item.lower())
    return tuple(out)


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scope {','.join(bad) or text!r}: expected one or more of {', '.join(SCOPES)}")
    return scopes


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Token:
    name: str
    scopes: tuple[str, ...]
    senders: tuple[str, ...] = ()  # empty: any envelope sender
    hashed: str = ""

    def allows_sender(self, sender: str) -> bool:
        """The null sender and any sender when the token has no list; else the address or
        its domain must be listed."""
        if not self.senders or not sender:
            return True
        s = sender.lower()
        return s in self.senders or ("@" + s.rpartition("@")[2]) in self.senders

    def line(self) -> str:
        return f"{self.name}:{','.join(self.scopes)}:{','.join(self.senders) or '*'}:sha256:{self.hashed}"


def parse_line(line: str) -> Token | None:
    parts = line.strip().split(":")
    if len(parts) != 5 or parts[3] != "sha256" or not _HEX_RE.fullmatch(parts[4]):
        return None
    name, scopes, senders = parts[0], parts[1], parts[2]
    if not valid_token_name(name):
        return None
    try:
        return Token(name, parse_scopes(scopes), () if senders == "*" else parse_senders(senders), parts[4])
    except ValueError:
        return None


class TokenDB:
    """The token file, re-read when its mtime, size or inode changes (one stat per lookup).
    A missing file means no tokens: every authenticated endpoint answers 401."""

    def __init__(self, path: str):
        self.path = path
        self._file = WatchedFile(path, "token file", "the HTTP API refuses every token")
        self._tokens: list[Token] = []

    def _refresh(self) -> None:
        lines = self._file.changed()
        if lines is None:
            return
        tokens, seen = [], set()
        for no, raw in enumerate(lines, 1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            tok = parse_line(raw)
            if tok is None:
                log.warning("%s:%d: ignored: not name:scopes:senders:sha256:<hex> (see mta http token add)",
                            self.path, no)
            elif tok.name in seen:
                log.warning("%s:%d: token %r listed again; ignored", self.path, no, tok.name)
            else:
                seen.add(tok.name)
                tokens.append(tok)
        self._tokens = tokens
        if self._file.ok:
            log.info("%s: %d token(s) loaded", self.path, len(tokens))

    def tokens(self) -> list[Token]:
        self._refresh()
        return list(self._tokens)

    def lookup(self, presented: str) -> Token | None:
        """The entry whose hash matches `presented`, comparing with every entry (constant
        time in the token's content; the loop never stops early)."""
        self._refresh()
        want = digest(presented)
        found = None
        for tok in self._tokens:
            if hmac.compare_digest(tok.hashed, want):
                found = tok
        return found


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def add_token(path: str, name: str, scopes: tuple[str, ...], senders: tuple[str, ...] = ()) -> str:
    """Create (or replace) `name`'s token; returns the token itself, which is stored nowhere."""
    if not valid_token_name(name):
        raise ValueError(f"invalid token name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-'")
    token = new_token()
    entry = Token(name, scopes, senders, digest(token))
    put_line(path, name, entry.line())
    return token


def delete_token(path: str, name: str) -> bool:
    return drop_line(path, name)
