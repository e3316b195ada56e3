"""The wire side of the SMTP/LMTP client: replies, message bodies, and one connection's
asyncio Protocol (`Connection`), driven by coroutines (client) or callbacks (lane).
Nothing with a bare CR or LF goes out; one reply timer per connection watches the deadline."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Callable, NamedTuple

from mta import _native
from mta._native import TlsClientConfig
from mta.delivery import Target
from mta.smtp import tlstransport

_MAX_REPLY_LINE = 8192

# ---------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------


class ReplyError(Exception):
    """The peer sent something that is not an SMTP reply (fatal for the connection);
    `replies` are those it completed before that, in order."""

    def __init__(self, text: str, replies: list | None = None) -> None:
        super().__init__(text)
        self.replies = replies or []


class Reply(NamedTuple):
    code: int
    lines: list[str]  # text of each line, without code and separator

    # The rule is the Rust one (rust/src/smtp/client.rs), which the callback lane also uses.
    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 code opening the first line, if it has the reply's class (2, 4, 5)."""
        return _native.reply_parts(self.code, self.lines)[0]

    @property
    def text(self) -> str:
        """All lines as one, each without its enhanced code, empty ones left out."""
        return _native.reply_parts(self.code, self.lines)[1]

    def parts(self) -> tuple[str | None, str]:
        """(enhanced, text) in one call: what a result records of a reply."""
        return _native.reply_parts(self.code, self.lines)

    def __str__(self) -> str:
        enh, text = self.parts()
        return f"{self.code}{' ' + enh if enh else ''} {text}".rstrip()


class ReplyParser:
    """Incremental parser of server replies: bytes in, complete `Reply`s out
    (the Rust parser, rust/src/smtp/reply.rs)."""

    __slots__ = ("_p",)

    def __init__(self, max_line: int = _MAX_REPLY_LINE) -> None:
        self._p = _native.ReplyParser(max_line)

    @property
    def native(self) -> _native.ReplyParser:
        """The Rust parser itself (the lane's ClientTransaction feeds it)."""
        return self._p

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


def data_parts(data: bytes, *, chunking: bool) -> list[bytes]:
    """What the data phase writes: the message and ".CRLF" (DATA), or "BDAT n LAST"
    and the message (CHUNKING). Stored messages nearly always are in wire form
    already (CRLF lines, none opening with "." when dot-stuffing counts): then they
    go out as they are, with no copy."""
    dot = not chunking
    parts = ([data, b".\r\n"] if dot else [data]) if _native.is_wire_form(data, dot_stuff=dot) \
        else [wire_body(data, dot_stuff=dot)]
    if chunking:
        parts.insert(0, b"BDAT %d LAST\r\n" % len(parts[0]))
    return parts


# ---------------------------------------------------------------------------
# One connection
# ---------------------------------------------------------------------------


class ConnError(Exception):
    """The conversation broke (timeout, connection lost, garbage): the text says where."""


class Stale(Exception):
    """A pooled connection was dead or refused RSET; nothing was decided on it."""


class Connection(asyncio.Protocol):
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
        # A callback-driven transaction (mta.delivery.lane) while one runs on this
        # connection: it gets the bytes, failures, drains and timeouts instead of _waiter.
        self.lane = None
        self.shape_key = ""  # the (source, site) budget this connection's slot belongs to
        self.on_lost: Callable[[], None] | None = None  # called once when it is gone (its slot back)

    def lost(self) -> None:
        """The connection is gone (or was never made): give back what it held, once."""
        cb, self.on_lost = self.on_lost, None
        if cb is not None:
            cb()

    # -- protocol callbacks --
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.lane is not None:
            self.lane.data(data)
            return
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
        self.lost()
        self._paused = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fail(f"connection lost ({exc})" if exc else "connection closed by the server")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self.lane is not None:
            self.lane.resumed()
        self._wake()

    def _fail(self, why: str) -> None:
        if self._error is None:
            self._error = why
        self.broken = True
        if self.lane is not None:
            self.lane.failed()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(True)

    # -- used by the client and the lane --
    @property
    def error(self) -> str | None:
        """Why the conversation broke (the first reason), or None."""
        return self._error

    def broke(self, why: str) -> None:
        """Record why the conversation broke, unless a reason is known already."""
        if self._error is None:
            self._error = why

    @property
    def parser(self) -> ReplyParser:
        return self._parser

    @property
    def paused(self) -> bool:
        """The transport's buffer is full: writing waits for resume_writing."""
        return self._paused

    @property
    def unread(self) -> bool:
        """Replies came that no command has taken (out of sync, when a transaction is over)."""
        return bool(self._replies)

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
            raise ConnError(self._error)
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self._error is not None:
            raise ConnError(self._error)
        self.transport.writelines(parts)

    async def _wait(self, timeout: float) -> bool:
        """Wait for `_wake` (a reply, an error, drained); False on timeout.
        This runs twice per message and the reply nearly always comes within
        milliseconds of timeouts of minutes, so one timer per connection watches
        the current deadline and is re-armed only when it fires early or a
        shorter deadline comes (a call_later + cancel per wait cost more)."""
        fut = self._waiter = self.loop.create_future()
        self.arm(timeout)
        try:
            return await fut
        finally:
            self._waiter = None

    def arm(self, timeout: float) -> None:
        """The current wait ends `timeout` seconds from now."""
        loop = self.loop
        deadline = self._deadline = loop.time() + timeout
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        lane, w = self.lane, self._waiter
        if lane is None and (w is None or w.done()):
            return  # nobody waits: the next wait arms a timer again
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
        elif lane is not None:
            lane.timed_out()
        else:
            w.set_result(False)

    async def drain(self, timeout: float, what: str) -> None:
        while self._paused and self._error is None:
            if not await self._wait(timeout):
                self.broken = True
                raise ConnError(f"timed out while sending {what}")
        if self._error is not None:
            raise ConnError(f"{self._error} while sending {what}")

    async def reply(self, timeout: float, what: str) -> Reply:
        while not self._replies:
            if self._error is not None:
                raise ConnError(f"{self._error} while waiting for the reply to {what}")
            if not await self._wait(timeout):
                self.broken = True
                raise ConnError(f"timed out waiting for the reply to {what}")
        r = self._replies.popleft()
        if r.code == 421:
            self.broken = True
        return r

    async def start_tls(self, ctx: ssl.SSLContext | TlsClientConfig, server_hostname: str, timeout: float) -> None:
        if self._replies or self._parser.buffered:
            # bytes after the 220 would be injected into the TLS session (CVE-2011-0411 style)
            self.broken = True
            raise ConnError("the server sent data after its reply to STARTTLS")
        if isinstance(ctx, TlsClientConfig):  # rustls (tls.engine): ours, over the plain transport
            conn = ctx.connect(server_hostname)
            self.transport.pause_reading()
            self.transport = await tlstransport.start_tls(self.loop, self.transport, self, conn, timeout)
        else:
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
        # A failed rustls handshake never reaches connection_lost (mta.smtp.tlstransport held
        # the transport and tells no app of a connection it never handed over); lost() is once.
        self.lost()
