"""Submission authentication building blocks, free of sockets: the user file
(scrypt hashes), the SASL PLAIN/LOGIN exchange (pure state machine), failure
accounting (tarpit, block), the sender-login map, Message-ID/Date fix-up.

Invariants: a password never reaches a log line, a repr or an exception text;
scrypt runs in an executor thread, never on the event loop; hashes are compared
in constant time; an unknown user costs the same scrypt as a known one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from collections import deque
from typing import Callable, Iterable, Mapping, NamedTuple

__all__ = [
    "hash_password", "verify_password", "UserDB", "read_user_lines", "set_user", "delete_user",
    "valid_user_name", "SaslExchange", "SaslStep", "AuthGuard", "check_sender", "SenderLogin",
    "add_missing_headers", "MECHANISMS",
]

log = logging.getLogger("mta.auth")

# ---------------------------------------------------------------------------
# Password hashes: $scrypt$n=16384,r=8,p=1$<salt b64>$<hash b64> (no padding)
# ---------------------------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 16384, 8, 1  # ~16 MiB and ~50 ms per verification
_SALT_LEN, _DK_LEN = 16, 32
_HASH_RE = re.compile(r"\$scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    text = text.rstrip("=")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * n + (1 << 20))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A new salted hash for the user file (slow on purpose: call off the event loop)."""
    salt = secrets.token_bytes(_SALT_LEN)
    dk = _scrypt(password.encode("utf-8"), salt, n, r, p, _DK_LEN)
    return f"$scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(dk)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    m = _HASH_RE.fullmatch(encoded)
    if m is None:
        return None
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    # Bounds: a hand-edited file must not make one login cost gigabytes or minutes.
    if not (2 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    try:
        salt, dk = _unb64(m[4]), _unb64(m[5])
    except (binascii.Error, ValueError):
        return None
    if not 8 <= len(salt) <= 64 or not 16 <= len(dk) <= 64:
        return None
    return n, r, p, salt, dk


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of `password` against a stored hash; False for a malformed hash."""
    parsed = _parse_hash(encoded)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        got = _scrypt(password.encode("utf-8", "surrogatepass"), salt, n, r, p, len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


# Verified when the user is unknown, so that "no such user" takes as long as
# "wrong password" (no user enumeration by timing).
_DUMMY_HASH = f"$scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"

# ---------------------------------------------------------------------------
# The user file: `user:hash` per line, # comments, mode 0600
# ---------------------------------------------------------------------------

_USER_RE = re.compile(r"[^\s:#\x00-\x1f\x7f][^\s:\x00-\x1f\x7f]{0,254}")


def valid_user_name(user: str) -> bool:
    """1..255 characters, no whitespace, control characters or ':'; not starting with '#'.
    User names are case-sensitive (an address as a user name is fine)."""
    return isinstance(user, str) and _USER_RE.fullmatch(user) is not None


def read_user_lines(path: str) -> list[str]:
    """The file's lines without line ends; [] when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _parse_users(lines: Iterable[str], path: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not valid_user_name(user) or _parse_hash(encoded) is None:
            log.warning("%s:%d: ignored: not user:$scrypt$... (see mta user add)", path, no)
            continue
        if user in users:
            log.warning("%s:%d: user %r listed again; the later line wins", path, no, user)
        users[user] = encoded
    return users


def _warn_mode(path: str, st: os.stat_result) -> None:
    if st.st_mode & 0o077:
        log.warning("%s: mode %03o: the user file should be readable by its owner only (chmod 600)",
                    path, stat.S_IMODE(st.st_mode))


class UserDB:
    """The user file, re-read whenever its mtime, size or inode changes (checked
    at each lookup: one stat). A missing or unreadable file means no users."""

    def __init__(self, path: str, executor=None) -> None:
        self.path = path
        self._executor = executor  # None: the loop's default thread pool
        self._sig: tuple | None = None
        self._users: dict[str, str] = {}

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._sig != ("missing",):
                log.error("%s: cannot read the user file: %s; nobody can authenticate", self.path, e.strerror)
                self._sig, self._users = ("missing",), {}
            return
        sig = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        if sig == self._sig:
            return
        try:
            lines = read_user_lines(self.path)
        except (OSError, UnicodeDecodeError) as e:
            log.error("%s: cannot read the user file: %s", self.path, e)
            self._sig, self._users = sig, {}
            return
        _warn_mode(self.path, st)
        self._users = _parse_users(lines, self.path)
        self._sig = sig
        log.info("%s: %d user(s) loaded", self.path, len(self._users))

    def users(self) -> list[str]:
        self._refresh()
        return sorted(self._users)

    def __contains__(self, user: str) -> bool:
        self._refresh()
        return user in self._users

    def verify_sync(self, user: str, password: str) -> bool:
        """Blocking check (scrypt); for threads and tests."""
        self._refresh()
        encoded = self._users.get(user)
        ok = verify_password(password, encoded or _DUMMY_HASH)
        return ok and encoded is not None

    async def verify(self, user: str, password: str) -> bool:
        """True when `user` exists and `password` matches. The file check (a stat) is
        done here; scrypt runs in the executor so the event loop never blocks on it."""
        self._refresh()
        encoded = self._users.get(user)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, verify_password, password, encoded or _DUMMY_HASH)
        return ok and encoded is not None


@contextlib.contextmanager
def _locked(path: str):
    """Serialize concurrent `mta user` edits: flock on the file's directory (it
    survives the rename that replaces the file, and leaves no lock file behind)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomic(path: str, lines: list[str]) -> None:
    """tmp file (0600) in the same directory, fsync, rename over, fsync the directory.
    An existing file's owner and group are kept (root editing the file of the mta user)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=".mta-users.", dir=directory)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _user_of(line: str) -> str | None:
    s = line.strip()
    if not s or s.startswith("#") or ":" not in s:
        return None
    return s.partition(":")[0]


def set_user(path: str, user: str, encoded: str) -> bool:
    """Add or replace `user` (comments and order kept). True if it was new."""
    if not valid_user_name(user):
        raise ValueError(f"invalid user name {user!r}: no whitespace, ':' or control characters")
    if _parse_hash(encoded) is None:
        raise ValueError("not a $scrypt$ hash")
    with _locked(path):
        lines = read_user_lines(path)
        new = [f"{user}:{encoded}"]
        out, found = [], False
        for line in lines:
            if _user_of(line) == user:
                if not found:
                    out.extend(new)
                found = True
            else:
                out.append(line)
        if not found:
            out.extend(new)
        _write_atomic(path, out)
    return not found


def delete_user(path: str, user: str) -> bool:
    """Remove `user`; False if it was not there (the file is left untouched)."""
    with _locked(path):
        lines = read_user_lines(path)
        out = [line for line in lines if _user_of(line) != user]
        if len(out) == len(lines):
            return False
        _write_atomic(path, out)
    return True


# ---------------------------------------------------------------------------
# SASL: AUTH PLAIN (RFC 4616) and AUTH LOGIN, as RFC 4954 carries them
# ---------------------------------------------------------------------------

MECHANISMS = ("PLAIN", "LOGIN")


def _reply(code: int, enhanced: str, text: str) -> bytes:
    return f"{code} {enhanced} {text}\r\n".encode()


R_AUTH_OK = _reply(235, "2.7.0", "Authentication successful")
R_AUTH_FAILED = _reply(535, "5.7.8", "Authentication credentials invalid")
R_AUTH_CANCELLED = _reply(501, "5.0.0", "Authentication cancelled")
R_AUTH_BAD_B64 = _reply(501, "5.5.2", "Cannot decode response")
R_AUTH_MALFORMED = _reply(501, "5.5.2", "Malformed authentication response")
R_AUTH_SYNTAX = _reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
R_AUTH_MECH = _reply(504, "5.5.4", "Unrecognized authentication type")
R_AUTH_NEED_TLS = _reply(530, "5.7.0", "Must issue a STARTTLS command first")
R_AUTH_TWICE = _reply(503, "5.5.1", "Already authenticated")
R_AUTH_IN_TX = _reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
R_AUTH_BLOCKED = _reply(421, "4.7.0", "Too many authentication failures, closing connection")
R_AUTH_TEMP = _reply(454, "4.7.0", "Temporary authentication failure")

_LOGIN_USER = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
_LOGIN_PASS = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
_PLAIN_GO = b"334 \r\n"


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
                return _challenge(_PLAIN_GO)
            return self._plain(initial.encode("ascii", "replace"))
        if self.mechanism == "LOGIN":
            if initial is None:
                self._stage = "login_user"
                return _challenge(_LOGIN_USER)
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
        return _challenge(_LOGIN_PASS)

    def _login_pass(self, b64: bytes) -> SaslStep:
        password = self._text(b64)
        if isinstance(password, SaslStep):
            return password
        if not self._user or not password:
            return self._finish(SaslStep("reply", R_AUTH_FAILED, user=self._user, failure=True))
        return self._finish(SaslStep("verify", user=self._user, password=password))


# ---------------------------------------------------------------------------
# Failure accounting: sliding window per IP and per user, tarpit, block
# ---------------------------------------------------------------------------

def _printable(text: str, limit: int = 64) -> str:
    """A user name as it may appear in a log line: no control characters, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


class AuthGuard:
    """Counts AUTH failures in a sliding window, per client IP and per user name.
    delay(): tarpit before the 535, 1 s, 2 s, 4 s ... up to tarpit_max, driven by
    the larger of the two counts. blocked(ip): max_failures reached for that IP
    (the session answers 421 4.7.0 and closes). Users are slowed, never blocked,
    so that a stranger cannot lock a user out. In-process (one per worker);
    memory is bounded by max_keys (the stalest keys are dropped first)."""

    def __init__(self, *, max_failures: int = 5, window: float = 600.0, tarpit_max: float = 8.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.tarpit_max = tarpit_max
        self.clock = clock
        self.max_keys = max_keys
        self._ips: dict[str, deque] = {}
        self._users: dict[str, deque] = {}

    def _count(self, table: dict[str, deque], key: str, now: float) -> int:
        q = table.get(key)
        if q is None:
            return 0
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del table[key]
            return 0
        return len(q)

    def _add(self, table: dict[str, deque], key: str, now: float) -> int:
        q = table.pop(key, None)
        if q is None:
            q = deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        q.append(now)
        if len(q) > 4 * self.max_failures + 8:  # enough to decide; bounded per key
            q.popleft()
        table[key] = q  # re-inserted: dict order is least recently failed first
        while len(table) > self.max_keys:
            del table[next(iter(table))]
        return len(q)

    def failures(self, ip: str, user: str | None = None) -> tuple[int, int]:
        now = self.clock()
        return self._count(self._ips, ip, now), (self._count(self._users, user, now) if user else 0)

    def failed(self, ip: str, user: str | None, mechanism: str = "") -> None:
        """Record one failure and log it (user name and IP; never the password)."""
        now = self.clock()
        n_ip = self._add(self._ips, ip, now)
        n_user = self._add(self._users, user, now) if user else 0
        log.warning("authentication failed: ip=%s user=%r mechanism=%s failures ip=%d user=%d",
                    ip, _printable(user or ""), mechanism or "-", n_ip, n_user)

    def succeeded(self, ip: str, user: str) -> None:
        """A good login clears the user's count (the IP's stays: one valid account
        must not reset a guessing client's record)."""
        self._users.pop(user, None)
        log.info("authenticated: ip=%s user=%r", ip, _printable(user))

    def delay(self, ip: str, user: str | None = None) -> float:
        """Seconds to wait before answering a failed AUTH: 0 with no failures."""
        n = max(self.failures(ip, user))
        if n == 0 or self.tarpit_max <= 0:
            return 0.0
        return min(2.0 ** min(n - 1, 30), self.tarpit_max)

    def blocked(self, ip: str) -> bool:
        return self.failures(ip)[0] >= self.max_failures


# ---------------------------------------------------------------------------
# Sender-login map: which envelope senders an authenticated user may use
# ---------------------------------------------------------------------------

SENDER_DEFAULTS = ("none", "self", "any")


def check_sender(user: str, mail_from: str, sender_login: Mapping[str, Iterable[str]],
                 default: str = "none") -> bool:
    """May `user` (authenticated) use MAIL FROM:<mail_from>?
    - "" (the null sender <>) is always allowed: it claims no identity, and mail
      programs send MDNs and auto-replies with it;
    - an entry "user@domain" allows that address; "@domain" allows every address
      in exactly that domain (not its subdomains); comparison ignores case;
    - a user absent from the map (or with no matching entry) falls back to `default`:
      "none" (nothing more), "self" (its own login name, when that is an address),
      "any" (everything: trusted submission only)."""
    if mail_from == "":
        return True
    addr = mail_from.lower()
    domain = "@" + addr.rpartition("@")[2] if "@" in addr else None
    for entry in sender_login.get(user, ()):
        e = entry.lower()
        if e == addr or (e.startswith("@") and e == domain):
            return True
    if default == "any":
        return True
    if default == "self":
        return "@" in user and user.lower() == addr
    return False


class SenderLogin:
    """check_sender bound to the [auth] config section."""

    def __init__(self, sender_login: Mapping[str, Iterable[str]], default: str = "none") -> None:
        if default not in SENDER_DEFAULTS:
            raise ValueError(f"sender_login_default must be one of {SENDER_DEFAULTS}")
        self.map = {k: tuple(v) for k, v in sender_login.items()}
        self.default = default

    @classmethod
    def from_config(cls, auth_cfg) -> SenderLogin:
        return cls(auth_cfg.sender_login, auth_cfg.sender_login_default)

    def check(self, user: str, mail_from: str) -> bool:
        return check_sender(user, mail_from, self.map, self.default)


# ---------------------------------------------------------------------------
# Message-ID and Date for submitted mail that lacks them
# ---------------------------------------------------------------------------

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
