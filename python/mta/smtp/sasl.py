"""SASL PLAIN (RFC 4616) and LOGIN as SMTP AUTH (RFC 4954) carries them: a pure
state machine, no I/O. Invariant: a password lives only in the "verify" step that
carries it; it is never in a repr, a log line or an exception text."""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

from mta.smtp.replies import (
    R_AUTH_BAD_B64, R_AUTH_CANCELLED, R_AUTH_FAILED, R_AUTH_MALFORMED, R_AUTH_MECH, R_AUTH_SYNTAX, R_LOGIN_PASS,
    R_LOGIN_USER, R_PLAIN_GO,
)

MECHANISMS = ("PLAIN", "LOGIN")


class SaslStep(NamedTuple):
    """What the session does next.
    kind "challenge": send `reply` (a 334 line), then feed the client's next line.
    kind "verify": check (user, password) — UserDB.verify — then answer R_AUTH_OK or R_AUTH_FAILED.
    kind "reply": the exchange ended without credentials; send `reply` (501/504/535).
    `failure`: counts as an authentication failure for the AuthGuard (535 only)."""

    kind: str
    reply: bytes = b""
    user: str = ""
    password: str = ""
    failure: bool = False

    def __repr__(self) -> str:  # never show the password
        return f"SaslStep(kind={self.kind!r}, reply={self.reply!r}, user={self.user!r}, failure={self.failure})"


def _challenge(line: bytes) -> SaslStep:
    return SaslStep("challenge", line)


def _end(reply: bytes, failure: bool = False) -> SaslStep:
    return SaslStep("reply", reply, failure=failure)


def _decode(text: bytes | str) -> bytes | None:
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    text = text.strip()
    if text == b"=":  # RFC 4954: an empty initial response
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class SaslExchange:
    """One AUTH command's dialogue. No I/O: `start(arg)` takes the AUTH argument as
    the parser gives it ("PLAIN dGVzdA==", "LOGIN"), `feed(line)` each client line
    that follows a 334 (the raw line, CR LF optional). Each returns a SaslStep;
    after a "verify" or "reply" step the exchange is over (`done`)."""

    __slots__ = ("mechanism", "_stage", "_user", "done")

    def __init__(self) -> None:
        self.mechanism = ""
        self._stage = ""
        self._user = ""
        self.done = False

    def start(self, arg: str) -> SaslStep:
        words = arg.split()
        if not 1 <= len(words) <= 2:
            return self._finish(_end(R_AUTH_SYNTAX))
        self.mechanism = words[0].upper()
        initial = words[1] if len(words) == 2 else None
        if self.mechanism == "PLAIN":
            if initial is None:
                self._stage = "plain"
                return _challenge(R_PLAIN_GO)
            return self._plain(initial.encode("ascii", "replace"))
        if self.mechanism == "LOGIN":
            if initial is None:
                self._stage = "login_user"
                return _challenge(R_LOGIN_USER)
            return self._login_user(initial.encode("ascii", "replace"))
        return self._finish(_end(R_AUTH_MECH))

    def feed(self, line: bytes) -> SaslStep:
        if self.done or not self._stage:
            raise RuntimeError("SaslExchange.feed: no challenge is outstanding")
        line = line.rstrip(b"\r\n")
        if line.strip() == b"*":
            return self._finish(_end(R_AUTH_CANCELLED))
        if self._stage == "plain":
            return self._plain(line)
        if self._stage == "login_user":
            return self._login_user(line)
        return self._login_pass(line)

    def _finish(self, step: SaslStep) -> SaslStep:
        self.done = True
        self._stage = ""
        return step

    def _plain(self, b64: bytes) -> SaslStep:
        raw = _decode(b64)
        if raw is None:
            return self._finish(_end(R_AUTH_BAD_B64))
        parts = raw.split(b"\0")
        if len(parts) != 3:
            return self._finish(_end(R_AUTH_MALFORMED))
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            return self._finish(_end(R_AUTH_MALFORMED))
        if not authcid or not password:
            return self._finish(_end(R_AUTH_FAILED, failure=True))
        if authzid and authzid != authcid:
            # Proxy authorization (acting as another user) is not offered.
            return self._finish(SaslStep("reply", R_AUTH_FAILED, user=authcid, failure=True))
        return self._finish(SaslStep("verify", user=authcid, password=password))

    def _text(self, b64: bytes) -> str | SaslStep:
        raw = _decode(b64)
        if raw is None:
            return self._finish(_end(R_AUTH_BAD_B64))
        if b"\0" in raw:
            return self._finish(_end(R_AUTH_MALFORMED))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._finish(_end(R_AUTH_MALFORMED))

    def _login_user(self, b64: bytes) -> SaslStep:
        user = self._text(b64)
        if isinstance(user, SaslStep):
            return user
        self._user = user
        self._stage = "login_pass"
        return _challenge(R_LOGIN_PASS)

    def _login_pass(self, b64: bytes) -> SaslStep:
        password = self._text(b64)
        if isinstance(password, SaslStep):
            return password
        if not self._user or not password:
            return self._finish(SaslStep("reply", R_AUTH_FAILED, user=self._user, failure=True))
        return self._finish(SaslStep("verify", user=self._user, password=password))
