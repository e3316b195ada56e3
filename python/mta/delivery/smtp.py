"""Outbound SMTP (and LMTP) client: pooled, pipelined, one `RcptResult` per recipient.

I/O model: an asyncio Protocol per connection (`_Connection`), not streams. Replies
are parsed incrementally in `data_received` into a queue that the transaction code
awaits one reply at a time, so a pipelined batch (RSET, MAIL, every RCPT, DATA) is
one `transport.write` and its replies are consumed in order without extra buffering
layers; STARTTLS is `loop.start_tls` on the same protocol. Replies are parsed by the
Rust parser (`rust/src/smtp/reply.rs`: lines end at LF, a CR before it dropped; the
code must be the same on every line).

Invariants: nothing with a bare CR or LF goes out (bare ones become CRLF); DATA is
dot-stuffed, BDAT is not; a message the peer refuses by SIZE (552 5.3.4) or that
needs SMTPUTF8 the peer lacks (550 5.6.7) is never sent; failures that are not SMTP
replies become synthetic 4xx replies (RFC 3463 codes), so nothing is ever bounced
for a network problem. Choices, documented:
- BODY=8BITMIME goes out only when the peer offers 8BITMIME; an 8-bit message to a
  peer without it is sent as is (no 7-bit conversion), as Postfix does by default.
- DSN parameters (NOTIFY, ORCPT, RET, ENVID) are passed only when the peer offers DSN;
  the "relayed" notice owed when it does not is the bounce module's business.
- TLS: "none" never starts TLS; "opportunistic" uses STARTTLS when offered without
  verifying the certificate, and if the handshake fails it reconnects to the same
  target once in clear; "required" verifies the chain (system store, or `ca_file`)
  and the name `Target.host`, and a target without working TLS is skipped (451 4.7.5
  when it was the last). Unix-socket targets (LMTP) never use TLS. Every result
  says what the session had (`RcptResult.tls`: "none" | "opportunistic" | "verified",
  or "failed" with a TLS-RPT result type in `tls_failure`); MTA-STS (mta.mtasts)
  builds on tls="required".
- AUTH (PLAIN, else LOGIN) credentials are sent only over TLS, except when the route
  says tls="none" (an explicit choice of clear text, e.g. a loopback smarthost); a
  peer that offers no AUTH gets the mail unauthenticated (Postfix's behaviour); an
  AUTH failure skips the target (a deferral, never a bounce: 535 becomes 4.7.8).
- A pooled connection is RSET before its next transaction (pipelined with it); if
  it turns out dead or refuses the RSET, the delivery retries on a new connection.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from mta import _native
from mta.delivery import OutMessage, OutRcpt, RcptResult, Target, results_for

__all__ = ["SmtpOptions", "SmtpDelivery", "Reply", "ReplyParser", "ReplyError", "wire_body"]

_MAX_REPLY_LINE = 8192
_WRITE_BLOCK = 256 * 1024  # the data phase is written in blocks; each must drain within data_block_timeout


@dataclass(frozen=True)
class SmtpOptions:
    helo: str  # our name in EHLO/HELO/LHLO
    tls: str = "opportunistic"  # "none" | "opportunistic" | "required"
    auth: tuple[str, str] | None = None  # (user, password) for smarthosts; see the module docstring
    max_connections: int = 20  # concurrent connections per destination key
    max_messages_per_connection: int = 100
    connect_timeout: float = 30.0
    idle_timeout: float = 5.0  # lifetime of an idle pooled connection
    lmtp: bool = False  # RFC 2033: LHLO, one reply per accepted recipient after the data
    ca_file: str | None = None  # trust anchors for tls="required" (default: the system store)

    def __post_init__(self) -> None:
        if self.tls not in ("none", "opportunistic", "required"):
            raise ValueError(f"tls must be none, opportunistic or required, not {self.tls!r}")


# ---------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\Z")


class ReplyError(Exception):
    """The peer sent something that is not an SMTP reply (fatal for the connection);
    `replies` are those it completed before that, in order."""

    def __init__(self, text: str, replies: list | None = None) -> None:
        super().__init__(text)
        self.replies = replies or []


class Reply(NamedTuple):
    code: int
    lines: list[str]  # text of each line, without code and separator

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 code opening the first line, if it has the reply's class."""
        tok = self.lines[0].split(" ", 1)[0] if self.lines else ""
        m = _ENHANCED.match(tok)
        return tok if m and int(m.group(1)) == self.code // 100 else None

    @property
    def text(self) -> str:
        """All lines as one, each without its enhanced code."""
        enh = self.enhanced
        out = []
        for line in self.lines:
            if enh and (line == enh or line.startswith(enh + " ")):
                line = line[len(enh) + 1:]
            out.append(line)
        return " ".join(x for x in out if x)

    def __str__(self) -> str:
        enh = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{enh} {self.text}".rstrip()


class ReplyParser:
    """Incremental parser of server replies: bytes in, complete `Reply`s out
    (the Rust parser, rust/src/smtp/reply.rs)."""

    __slots__ = ("_p",)

    def __init__(self, max_line: int = _MAX_REPLY_LINE) -> None:
        self._p = _native.ReplyParser(max_line)

    @property
    def buffered(self) -> bool:
        """True when part of a reply has been received (matters after STARTTLS's 220)."""
        return self._p.buffered

    def feed(self, data: bytes) -> list[Reply]:
        try:
            replies = [Reply(code, lines) for code, lines in self._p.feed(data)]
        except ValueError as e:
            raise ReplyError(str(e)) from None
        if self._p.error is not None:
            raise ReplyError(f"{self._p.error}: {data[:80]!r}", replies)
        return replies


# ---------------------------------------------------------------------------
# Wire encoding
# ---------------------------------------------------------------------------

def wire_body(data: bytes, *, dot_stuff: bool) -> bytes:
    """The message as it goes on the wire: every line ending CRLF (bare CR or LF
    become CRLF), ending with CRLF; with dot_stuff (DATA) lines starting with "."
    get another one and the terminating ".CRLF" is appended. In Rust: in Python
    the passes over a 64 KiB message cost more than its whole SMTP transaction."""
    return _native.wire_body(data, dot_stuff=dot_stuff)


def xtext(s: str) -> str:
    """RFC 3461 xtext: "+", "=", controls, space and non-ASCII octets as +XX."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}" for b in s.encode("utf-8")
    )


def _mail_line(msg: OutMessage, ext: dict[str, str], utf8: bool) -> bytes:
    params = []
    if "SIZE" in ext:
        params.append(f"SIZE={len(msg.data)}")
    if msg.body and "8BITMIME" in ext:
        params.append(f"BODY={msg.body}")
    if utf8:
        params.append("SMTPUTF8")
    if "DSN" in ext:
        if msg.ret:
            params.append(f"RET={msg.ret}")
        if msg.envid:
            params.append(f"ENVID={xtext(msg.envid)}")
    return _line(f"MAIL FROM:<{msg.sender}>", params)


def _rcpt_line(r: OutRcpt, ext: dict[str, str]) -> bytes:
    params = []
    if "DSN" in ext:
        if r.notify:
            params.append("NOTIFY=" + ",".join(r.notify))
        if r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            params.append(f"ORCPT={kind};{xtext(addr)}")
    return _line(f"RCPT TO:<{r.address}>", params)


def _line(cmd: str, params: list[str]) -> bytes:
    s = " ".join([cmd, *params]) + "\r\n"
    if "\r" in s[:-2] or "\n" in s[:-2]:
        raise ValueError("CR or LF in an envelope address or parameter")
    return s.encode("utf-8")


# ---------------------------------------------------------------------------
# One connection
# ---------------------------------------------------------------------------


class _ConnError(Exception):
    """The conversation broke (timeout, connection lost, garbage): the text says where."""


class _Failure(Exception):
    """This target could not be used; try the next one. `tls` is set (to a TLS-RPT
    result type such as "starttls-not-supported") when TLS was the problem."""

    def __init__(self, enhanced: str, text: str, *, tls: str | None = None) -> None:
        super().__init__(text)
        self.enhanced, self.text, self.tls = enhanced, text, tls


def _tls_failure_type(e: BaseException) -> str:
    """The TLS-RPT (RFC 8460 §4.3) result type of a failed handshake."""
    if isinstance(e, ssl.SSLCertVerificationError):
        code = getattr(e, "verify_code", None)
        if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return "certificate-host-mismatch"
        if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return "certificate-expired"
        if code in (2, 18, 19, 20, 21):  # unknown issuer, self-signed, untrusted chain
            return "certificate-not-trusted"
    return "validation-failure"


class _Stale(Exception):
    """A pooled connection was dead or refused RSET; nothing was decided on it."""


class _Connection(asyncio.Protocol):
    """The byte side of one SMTP/LMTP connection plus what we learnt about the peer."""

    def __init__(self, target: Target, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = ReplyParser()
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future | None = None
        self._error: str | None = None
        self._paused = False
        self.ext: dict[str, str] = {}  # EHLO keywords (upper case) -> parameters
        self.tls = False
        self.verified = False  # TLS with the chain and Target.host checked
        self.messages = 0  # transactions attempted on this connection
        self.broken = False  # out of sync or closing: never reuse
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # loop time of the last release to the pool
        # One lazily re-armed timer watches every reply wait (see _wait).
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- protocol callbacks --
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ReplyError as e:
            self._replies.extend(e.replies)  # answers that came before the garbage still count
            self._fail(str(e))
            self.abort()
            return
        if replies:
            self._replies.extend(replies)
            self._wake()

    def eof_received(self) -> bool:
        self._fail("connection closed by the server")
        return False

    def connection_lost(self, exc) -> None:
        self._paused = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fail(f"connection lost ({exc})" if exc else "connection closed by the server")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def _fail(self, why: str) -> None:
        if self._error is None:
            self._error = why
        self.broken = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(True)

    # -- used by the client --
    @property
    def alive(self) -> bool:
        t = self.transport
        return self._error is None and not self.broken and t is not None and not t.is_closing()

    @property
    def tls_state(self) -> str:
        """"verified" | "opportunistic" (encrypted, not verified) | "none" (clear)."""
        return "verified" if self.verified else "opportunistic" if self.tls else "none"

    @property
    def name(self) -> str:
        t = self.target
        return t.host if t.ip == "unix" else f"{t.host}[{t.ip}]:{t.port}"

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise _ConnError(self._error)
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self._error is not None:
            raise _ConnError(self._error)
        self.transport.writelines(parts)

    async def _wait(self, timeout: float) -> bool:
        """Wait for `_wake` (a reply, an error, drained); False on timeout.
        This runs twice per message and the reply nearly always comes within
        milliseconds of timeouts of minutes, so one timer per connection watches
        the current deadline and is re-armed only when it fires early or a
        shorter deadline comes (a call_later + cancel per wait cost more)."""
        loop = self.loop
        fut = self._waiter = loop.create_future()
        deadline = self._deadline = loop.time() + timeout
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._check_deadline)
        try:
            return await fut
        finally:
            self._waiter = None

    def _check_deadline(self) -> None:
        self._timer = None
        w = self._waiter
        if w is None or w.done():
            return  # nobody waits: the next wait arms a timer again
        if self.loop.time() >= self._deadline:
            w.set_result(False)
        else:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    async def drain(self, timeout: float, what: str) -> None:
        while self._paused and self._error is None:
            if not await self._wait(timeout):
                self.broken = True
                raise _ConnError(f"timed out while sending {what}")
        if self._error is not None:
            raise _ConnError(f"{self._error} while sending {what}")

    async def reply(self, timeout: float, what: str) -> Reply:
        while not self._replies:
            if self._error is not None:
                raise _ConnError(f"{self._error} while waiting for the reply to {what}")
            if not await self._wait(timeout):
                self.broken = True
                raise _ConnError(f"timed out waiting for the reply to {what}")
        r = self._replies.popleft()
        if r.code == 421:
            self.broken = True
        return r

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str | None, timeout: float) -> None:
        if self._replies or self._parser.buffered:
            # bytes after the 220 would be injected into the TLS session (CVE-2011-0411 style)
            self.broken = True
            raise _ConnError("the server sent data after its reply to STARTTLS")
        self.transport = await self.loop.start_tls(
            self.transport, self, ctx, server_hostname=server_hostname, ssl_handshake_timeout=timeout)
        self.tls = True

    def quit(self) -> None:
        """Say goodbye without waiting for 221 (close flushes the QUIT first)."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        t = self.transport
        if t is not None and not t.is_closing():
            if self._error is None and not self.broken:
                t.write(b"QUIT\r\n")
            t.close()
        self.broken = True

    def abort(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.broken = True
        if self.transport is not None:
            self.transport.abort()


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


def _soft(enhanced: str | None, default: str) -> str:
    """An enhanced code as a temporary one (a target-level failure never bounces)."""
    return "4" + enhanced[1:] if enhanced else default


class _Gate:
    """At most max_connections deliveries per destination key; the rest wait in
    order. A plain counter and futures: an asyncio.Semaphore cost more per message."""

    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running = 0
        self.waiting: deque[asyncio.Future] = deque()

    def pass_on(self, key: str, gates: dict) -> None:
        """A delivery is done: its place goes to the first live waiter, or is freed."""
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1
        if not self.running:  # forget idle destinations: the dict stays as small as the active set
            del gates[key]


class SmtpDelivery:
    """Delivers messages over SMTP (or LMTP with opts.lmtp) with an idle connection
    pool and a concurrency limit per destination key. One instance per event loop."""

    # RFC 5321 section 4.5.3.2 timeouts (seconds); attributes so tests can shorten them.
    greeting_timeout = 300.0
    helo_timeout = 300.0
    starttls_timeout = 120.0  # the STARTTLS reply and the handshake
    auth_timeout = 120.0
    rset_timeout = 60.0
    mail_timeout = 300.0
    rcpt_timeout = 300.0
    data_init_timeout = 120.0
    data_block_timeout = 180.0
    data_done_timeout = 600.0

    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}  # key -> its concurrency limit (only while in use)
        self._idle: dict[str, list[_Connection]] = {}
        self._closed = False
        self.connections_opened = 0  # counters for tests and stats
        self.connections_reused = 0

    # -- public API --
    async def deliver(self, key: str, targets: Sequence[Target], opts: SmtpOptions,
                      msg: OutMessage) -> list[RcptResult]:
        """One result per recipient of msg, in order. Never raises for network or
        protocol trouble (those become 4xx results)."""
        if not msg.recipients:
            return []
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if gate.running >= max(1, opts.max_connections):
            fut = asyncio.get_running_loop().create_future()
            gate.waiting.append(fut)
            try:
                await fut  # our turn: the finishing delivery passed its place on to us
            except BaseException:
                if fut.done() and not fut.cancelled():
                    gate.pass_on(key, self._gates)  # given a place, then cancelled: hand it on
                elif fut in gate.waiting:  # (a finishing delivery may have skipped it already)
                    gate.waiting.remove(fut)
                raise
        else:
            gate.running += 1
        try:
            return await self._deliver(key, targets, opts, msg)
        finally:
            gate.pass_on(key, self._gates)

    async def close(self) -> None:
        """QUIT every idle pooled connection; connections in use close when their delivery ends."""
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.quit()
        self._idle.clear()
        await asyncio.sleep(0)

    # -- internals --
    async def _deliver(self, key, targets, opts, msg) -> list[RcptResult]:
        while (conn := self._take_idle(key)) is not None:
            try:
                results = await self._run(conn, opts, msg)
            except _Stale:
                conn.abort()
                continue
            self._release(key, conn, opts)
            self.connections_reused += 1
            return results
        last: tuple[_Failure, Target] | None = None
        for target in targets:
            try:
                conn = await self._connect(target, opts)
            except _Failure as f:
                last = (f, target)
                continue
            results = await self._run(conn, opts, msg)  # a fresh connection is never _Stale
            self._release(key, conn, opts)
            return results
        if last is None:
            return results_for(msg, 451, "4.4.1", "no address to deliver to")
        f, t = last
        return results_for(msg, 451, f.enhanced, f.text, t.host, t.ip,
                           tls="failed" if f.tls else None, tls_failure=f.tls)

    async def _run(self, conn: _Connection, opts: SmtpOptions, msg: OutMessage) -> list[RcptResult]:
        try:
            return await self._transaction(conn, opts, msg)
        except BaseException:
            conn.abort()  # cancelled or a bug: the conversation state is unknown
            raise

    async def _send_data(self, conn: _Connection, parts: list[bytes]) -> None:
        """The data phase's bytes: one gathered write when small, else blocks that must
        each drain within data_block_timeout."""
        if sum(map(len, parts)) <= _WRITE_BLOCK:
            conn.writelines(parts)
            await conn.drain(self.data_block_timeout, "the message")
            return
        for part in parts:
            view = memoryview(part)
            for off in range(0, len(view), _WRITE_BLOCK):
                conn.write(view[off:off + _WRITE_BLOCK])
                await conn.drain(self.data_block_timeout, "the message")

    def _take_idle(self, key: str) -> _Connection | None:
        conns = self._idle.get(key)
        while conns:
            c = conns.pop()
            if not conns:
                del self._idle[key]
            if c.alive:
                return c  # its idle timer stays armed; it checks on firing (_expire)
            c.abort()
        return None

    def _release(self, key: str, conn: _Connection, opts: SmtpOptions) -> None:
        if self._closed or not conn.alive or conn.messages >= opts.max_messages_per_connection:
            conn.quit()
            return
        self._idle.setdefault(key, []).append(conn)
        conn.idle_since = conn.loop.time()
        if conn.idle_timer is None:
            # One timer per connection, re-armed lazily: a pooled connection is taken
            # and released once per message, and a cancel + call_later each time cost more.
            conn.idle_timer = conn.loop.call_later(opts.idle_timeout, self._expire, key, conn,
                                                   opts.idle_timeout)

    def _expire(self, key: str, conn: _Connection, timeout: float) -> None:
        conn.idle_timer = None
        conns = self._idle.get(key)
        if conns is None or conn not in conns:
            return  # in use (re-armed at its release) or gone
        idle = conn.loop.time() - conn.idle_since
        if idle < timeout:
            conn.idle_timer = conn.loop.call_later(timeout - idle, self._expire, key, conn, timeout)
            return
        conns.remove(conn)
        if not conns:
            del self._idle[key]
        conn.quit()

    # -- opening a connection: connect, greeting, EHLO, STARTTLS, AUTH --
    async def _connect(self, target: Target, opts: SmtpOptions) -> _Connection:
        try:
            return await self._open(target, opts, use_tls=opts.tls != "none")
        except _Failure as f:
            if not (f.tls and opts.tls == "opportunistic"):
                raise
        return await self._open(target, opts, use_tls=False)  # once more, in clear

    async def _open(self, target: Target, opts: SmtpOptions, *, use_tls: bool) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(target, loop)
        try:
            async with asyncio.timeout(opts.connect_timeout):
                if target.ip == "unix":
                    await loop.create_unix_connection(lambda: conn, target.host)
                else:
                    await loop.create_connection(lambda: conn, target.ip, target.port)
        except TimeoutError:
            raise _Failure("4.4.1", f"connection to {conn.name} timed out") from None
        except OSError as e:
            raise _Failure("4.4.1", f"connection to {conn.name} failed: {e.strerror or e}") from None
        self.connections_opened += 1
        try:
            await self._handshake(conn, opts, use_tls)
        except _ConnError as e:
            conn.abort()
            raise _Failure("4.4.2", f"{conn.name}: {e}") from None
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _handshake(self, conn: _Connection, opts: SmtpOptions, use_tls: bool) -> None:
        r = await conn.reply(self.greeting_timeout, "the greeting")
        if r.code != 220:
            conn.quit()
            raise _Failure(_soft(r.enhanced, "4.4.1"), f"{conn.name} greeted: {r}")
        await self._hello(conn, opts)
        unix = conn.target.ip == "unix"
        if use_tls and not unix and "STARTTLS" in conn.ext:
            conn.write(b"STARTTLS\r\n")
            r = await conn.reply(self.starttls_timeout, "STARTTLS")
            if r.code == 220:
                await self._tls(conn, opts)
                await self._hello(conn, opts)
            elif opts.tls == "required":
                conn.quit()
                raise _Failure("4.7.5", f"{conn.name} refused STARTTLS: {r}", tls="starttls-not-supported")
        if opts.tls == "required" and not conn.tls and not unix:
            conn.quit()
            raise _Failure("4.7.5", f"TLS is required but {conn.name} does not offer STARTTLS",
                           tls="starttls-not-supported")
        if opts.auth:
            await self._auth(conn, opts)

    async def _hello(self, conn: _Connection, opts: SmtpOptions) -> None:
        verb = "LHLO" if opts.lmtp else "EHLO"
        conn.write(f"{verb} {opts.helo}\r\n".encode())
        r = await conn.reply(self.helo_timeout, verb)
        if r.code == 250:
            ext = {}
            for line in r.lines[1:]:
                kw, _, params = line.strip().partition(" ")
                if kw:
                    ext[kw.upper()] = params.strip()
            conn.ext = ext
            return
        if opts.lmtp or r.code == 421:
            conn.quit()
            raise _Failure(_soft(r.enhanced, "4.4.1"), f"{conn.name} refused {verb}: {r}")
        conn.write(f"HELO {opts.helo}\r\n".encode())
        r = await conn.reply(self.helo_timeout, "HELO")
        if r.code != 250:
            conn.quit()
            raise _Failure(_soft(r.enhanced, "4.4.1"), f"{conn.name} refused HELO: {r}")
        conn.ext = {}

    async def _tls(self, conn: _Connection, opts: SmtpOptions) -> None:
        host = conn.target.host
        if opts.tls == "required":
            ctx = ssl.create_default_context(cafile=opts.ca_file)
            server_hostname: str | None = host
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            server_hostname = host if host and host != conn.target.ip else None  # SNI only
        try:
            await conn.start_tls(ctx, server_hostname, self.starttls_timeout)
        except (ssl.SSLError, ssl.CertificateError, OSError, TimeoutError, ConnectionError) as e:
            conn.abort()
            raise _Failure("4.7.5", f"TLS with {conn.name} failed: {e}", tls=_tls_failure_type(e)) from None
        conn.verified = opts.tls == "required"

    async def _auth(self, conn: _Connection, opts: SmtpOptions) -> None:
        if not conn.tls and opts.tls != "none":
            conn.quit()
            raise _Failure("4.7.0", f"not sending credentials to {conn.name} without TLS")
        mechs = conn.ext.get("AUTH", "").upper().split()
        user, password = opts.auth
        b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
        if "PLAIN" in mechs:
            conn.write(f"AUTH PLAIN {b64(f'{chr(0)}{user}{chr(0)}{password}')}\r\n".encode())
            r = await conn.reply(self.auth_timeout, "AUTH")
        elif "LOGIN" in mechs:
            conn.write(b"AUTH LOGIN\r\n")
            r = await conn.reply(self.auth_timeout, "AUTH")
            for secret in (user, password):
                if r.code != 334:
                    break
                conn.write(f"{b64(secret)}\r\n".encode())
                r = await conn.reply(self.auth_timeout, "AUTH")
        else:
            return  # no AUTH offered: send unauthenticated, as Postfix does
        if r.code != 235:
            conn.quit()
            raise _Failure(_soft(r.enhanced, "4.7.8"), f"authentication to {conn.name} failed: {r}")

    # -- one transaction --
    async def _transaction(self, conn: _Connection, opts: SmtpOptions,
                           msg: OutMessage) -> list[RcptResult]:
        host, ip = conn.target.host, conn.target.ip
        tls = conn.tls_state
        ext = conn.ext
        limit = ext.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < len(msg.data):
            return results_for(msg, 552, "5.3.4",
                               f"message size {len(msg.data)} exceeds the limit of {conn.name} ({limit})",
                               host, ip, tls=tls)
        utf8 = msg.smtputf8 or not _ascii(msg)
        if utf8 and "SMTPUTF8" not in ext:
            return results_for(msg, 550, "5.6.7",
                               f"{conn.name} does not support SMTPUTF8, which this message needs",
                               host, ip, tls=tls)
        try:
            mail = _mail_line(msg, ext, utf8)
            rcpt_lines = [_rcpt_line(r, ext) for r in msg.recipients]
        except ValueError as e:  # never from our own receive path, which refuses such addresses
            return results_for(msg, 550, "5.1.3", str(e), host, ip, tls=tls)

        def result(addr: str, r: Reply) -> RcptResult:
            return RcptResult(addr, r.code, r.enhanced, r.text, host, ip, tls)

        rcpts = msg.recipients
        results: list[RcptResult | None] = [None] * len(rcpts)
        reused = conn.messages > 0
        conn.messages += 1
        chunking = "CHUNKING" in ext
        pipelining = "PIPELINING" in ext
        # (line, timeout, name) of the command batch before the data
        cmds: list[tuple[bytes, float, str]] = []
        if reused:
            cmds.append((b"RSET\r\n", self.rset_timeout, "RSET"))
        cmds.append((mail, self.mail_timeout, "MAIL FROM"))
        cmds += [(line, self.rcpt_timeout, "RCPT TO") for line in rcpt_lines]
        if not chunking:
            cmds.append((b"DATA\r\n", self.data_init_timeout, "DATA"))
        try:
            if pipelining:
                conn.write(b"".join(c[0] for c in cmds))
            accepted: list[int] = []
            mail_ok = True
            for i, (line, timeout, what) in enumerate(cmds):
                if not pipelining:
                    if not mail_ok or (what == "DATA" and not accepted):
                        break  # lock-step: nothing more to say
                    conn.write(line)
                try:
                    r = await conn.reply(timeout, what)
                except _ConnError:
                    if what == "RSET":
                        raise _Stale() from None
                    raise
                if what == "RSET":
                    if r.code // 100 != 2:
                        raise _Stale()
                elif what == "MAIL FROM":
                    if r.code // 100 != 2:
                        mail_ok = False
                        results = [result(a.address, r) for a in rcpts]
                elif what == "RCPT TO":
                    k = i - 1 - reused
                    if mail_ok:
                        if r.code // 100 == 2:
                            accepted.append(k)
                        else:
                            results[k] = result(rcpts[k].address, r)
                elif what == "DATA":
                    if r.code != 354:
                        for k in accepted:
                            results[k] = result(rcpts[k].address, r)
                        accepted = []
                    elif not accepted:
                        # a server that said 354 although nothing was accepted: end it empty
                        conn.write(b".\r\n")
                        await conn.reply(self.data_done_timeout, "the end of data")
            if not mail_ok or not accepted:
                return results  # type: ignore[return-value]
            dot = not chunking
            data = msg.data
            # Stored messages nearly always are in wire form already (CRLF lines, none
            # opening with "."): then they go out as they are, with no copy.
            parts = ([data, b".\r\n"] if dot else [data]) if _native.is_wire_form(data, dot_stuff=dot) \
                else [wire_body(data, dot_stuff=dot)]
            if chunking:
                parts.insert(0, b"BDAT %d LAST\r\n" % len(parts[0]))
            await self._send_data(conn, parts)
            if opts.lmtp:
                for k in accepted:
                    r = await conn.reply(self.data_done_timeout, "the end of data")
                    results[k] = result(rcpts[k].address, r)
            else:
                r = await conn.reply(self.data_done_timeout, "the end of data")
                for k in accepted:
                    results[k] = result(rcpts[k].address, r)
            return results  # type: ignore[return-value]
        except _ConnError as e:
            conn.abort()
            text = f"{conn.name}: {e}"
            return [res or RcptResult(rc.address, 451, "4.4.2", text, host, ip, tls)
                    for rc, res in zip(rcpts, results)]


def _ascii(msg: OutMessage) -> bool:
    return msg.sender.isascii() and all(r.address.isascii() for r in msg.recipients)
