"""Outbound SMTP (and LMTP) client: pooled, pipelined, one `RcptResult` per recipient.
Nothing with a bare CR or LF goes out; a network failure is a synthetic 4xx, never a bounce;
a message the peer refuses by SIZE or lacks SMTPUTF8 for is never sent."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from mta import _native
from mta._native import TlsError
from mta.delivery import OutMessage, RcptResult, Target, results_for
from mta.delivery.smtp.protocol import (
    Reply, ReplyError, ReplyParser, ConnError, Connection, Stale, data_parts,
    wire_body,
)
from mta.delivery.smtp.tlsclient import ClientContext, ClientTls
from mta.delivery.smtp.lane import SEND_DATA, SEND_EMPTY_END, STALE, TIMEOUT_FOR, WAIT, Lane, Queued, resume
from mta.delivery.shaping.budgets import Budgets
from mta.delivery.shaping.signals import suspended_results

log = logging.getLogger("mta.delivery")

__all__ = ["SmtpOptions", "SmtpDelivery", "Reply", "ReplyParser", "ReplyError", "wire_body"]

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
    tls_engine: str = "rustls"  # opportunistic TLS with "rustls" or "openssl" (tls.engine); verified: OpenSSL
    # The delivery agent answers a job it delivered and logged with its rows too (True: the
    # worker tells plugins' on_delivered hooks the replies), or with the delivery log's text
    # it wrote ("log": the worker's webhooks make their delivered events from it).
    report: bool | str = False
    # Traffic shaping (mta.delivery.shaping): the egress source's local address to bind
    # (None: the kernel's choice), and the budgets of (source, site). `shape_key`
    # ("<source>|<site>") names them in the throttle; "" (tests, direct use): no shared
    # slots. `shaped`: rates or reply rules may bind (else only connection slots are taken).
    source_address: str | None = None
    shape_key: str = ""
    shaped: bool = False
    message_interval: float = 0.0  # seconds per message token; 0: no message rate
    message_burst: int = 1
    connection_interval: float = 0.0  # seconds per new connection; 0: no connection rate
    connection_burst: int = 1

    def __post_init__(self) -> None:
        if self.tls not in ("none", "opportunistic", "required"):
            raise ValueError(f"tls must be none, opportunistic or required, not {self.tls!r}")
        if self.tls_engine not in ("rustls", "openssl"):
            raise ValueError(f"tls_engine must be rustls or openssl, not {self.tls_engine!r}")


class _Failure(Exception):
    """This target could not be used; try the next one. `tls` is set (to a TLS-RPT
    result type such as "starttls-not-supported") when TLS was the problem."""

    def __init__(self, enhanced: str, text: str, *, tls: str | None = None) -> None:
        super().__init__(text)
        self.enhanced, self.text, self.tls = enhanced, text, tls


def _tls_failure_type(e: BaseException) -> str:
    """The TLS-RPT (RFC 8460 §4.3) result type of a failed handshake."""
    if isinstance(e, TlsError):
        return e.kind
    if isinstance(e, ssl.SSLCertVerificationError):
        code = getattr(e, "verify_code", None)
        if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return "certificate-host-mismatch"
        if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return "certificate-expired"
        if code in (2, 18, 19, 20, 21):  # unknown issuer, self-signed, untrusted chain
            return "certificate-not-trusted"
    return "validation-failure"


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
        self.waiting: deque[asyncio.Future | Queued] = deque()  # in arrival order

    def pass_on(self, key: str, gates: dict) -> None:
        """A delivery is done: its place goes to the first live waiter (a coroutine's
        future, or a job queued for the callback lane), or is freed."""
        while self.waiting:
            w = self.waiting.popleft()
            if isinstance(w, Queued):
                w.start()  # on the lane, or the coroutine path: it has the place now
                return
            if not w.done():
                w.set_result(None)
                return
        self.running -= 1
        if not self.running:  # forget idle destinations: the dict stays as small as the active set
            del gates[key]


# I/O model: an asyncio Protocol per connection (protocol.Connection), not streams; replies are
# parsed incrementally (Rust) into a queue the transaction awaits one at a time, so a pipelined
# batch (RSET, MAIL, every RCPT, DATA) is one write; STARTTLS is loop.start_tls on the same
# protocol. Invariants: DATA is dot-stuffed, BDAT is not.
# Choices, documented:
# - BODY=8BITMIME goes out only when the peer offers 8BITMIME; an 8-bit message to a
#   peer without it is sent as is (no 7-bit conversion), as Postfix does by default.
# - DSN parameters (NOTIFY, ORCPT, RET, ENVID) are passed only when the peer offers DSN;
#   the "relayed" notice owed when it does not is the bounce module's business.
# - TLS: "none" never starts TLS; "opportunistic" uses STARTTLS when offered without
#   verifying the certificate, and if the handshake fails it reconnects to the same
#   target once in clear; "required" verifies the chain (system store, or `ca_file`)
#   and the name `Target.host`, and a target without working TLS is skipped (451 4.7.5
#   when it was the last). Unix-socket targets (LMTP) never use TLS. Every result
#   says what the session had (`RcptResult.tls`: "none" | "opportunistic" | "verified",
#   or "failed" with a TLS-RPT result type in `tls_failure`); MTA-STS (mta.mtasts)
#   builds on tls="required".
# - AUTH (PLAIN, else LOGIN) credentials are sent only over TLS, except when the route
#   says tls="none" (an explicit choice of clear text, e.g. a loopback smarthost); a
#   peer that offers no AUTH gets the mail unauthenticated (Postfix's behaviour); an
#   AUTH failure skips the target (a deferral, never a bounce: 535 becomes 4.7.8).
# - A pooled connection is RSET before its next transaction (pipelined with it); if
#   it turns out dead or refuses the RSET, the delivery retries on a new connection.
# - `submit` runs the common transaction (a pooled PIPELINING connection, a message of
#   one write block) on callbacks instead (mta.delivery.lane). Both paths have the Rust
#   `ClientTransaction` decide what the replies mean; peers without PIPELINING get it lock-step.
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

    def __init__(self, throttle=None) -> None:
        # The shared budgets (mta.delivery.shaping): connection slots, rates and suspensions
        # per (source, site), machine- or cluster-wide. None: per-process gates only.
        self.budgets = Budgets(throttle) if throttle is not None else None
        self._gates: dict[str, _Gate] = {}  # key -> its concurrency limit (only while in use)
        self._idle: dict[str, list[Connection]] = {}
        self._closed = False
        self.connections_opened = 0  # counters for tests and stats
        self.connections_reused = 0
        self.tls = ClientTls()  # client contexts made once, sessions kept per destination
        self.lanes = 0  # callback-lane transactions in flight (mta.delivery.lane)
        self.chained = 0  # transactions pipelined behind another's data (mta.delivery.lane)
        self._settled: asyncio.Future | None = None  # set when `lanes` drops to 0

    # -- public API --
    async def deliver(self, key: str, targets: Sequence[Target], opts: SmtpOptions,
                      msg: OutMessage) -> list[RcptResult]:
        """One result per recipient of msg, in order. Never raises for network or
        protocol trouble (those become 4xx results)."""
        if not msg.recipients:
            return []
        if self.budgets is not None and (until := self.budgets.suspended(opts)):
            return suspended_results(msg, opts.shape_key, until)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if gate.running >= self._limit(opts):
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
            return await self.deliver_held(key, targets, opts, msg)
        finally:
            gate.pass_on(key, self._gates)

    def submit(self, key: str, targets: Sequence[Target], opts: SmtpOptions, msg: OutMessage,
               done: Callable[[list[tuple]], object], error: Callable[[str], object]) -> bool:
        """`deliver` on callbacks (mta.delivery.lane), for the common case: a message of
        one write block, and a pooled connection that offers PIPELINING and whose SIZE
        and SMTPUTF8 let it through. When the destination's connections are all in use,
        the job waits at the gate in order with the coroutines waiting there, and takes
        the connection its place comes with (`Queued`). `done(rows)` (RcptResult-shaped
        tuples) or `error(text)` is called exactly once. False, with nothing done, when
        the message must take `deliver`."""
        if self._closed or not msg.recipients or len(msg.data) > _WRITE_BLOCK:
            return False
        if opts.shaped and not self._may_send(opts):
            return False  # suspended, or no message token now: `deliver` waits for one (or answers)
        gate = self._gates.get(key)
        if gate is not None and (gate.waiting or gate.running >= self._limit(opts)):
            gate.waiting.append(Queued(self, key, targets, opts, msg, done, error))
            self.lanes += 1  # answered on callbacks, like a lane: settle() waits for it
            return True
        found = self._lane_connection(key, msg)
        if found is None:
            return False
        if gate is None:
            gate = self._gates[key] = _Gate()
        gate.running += 1
        self.lanes += 1
        conn, envelope = found
        Lane(self, key, targets, opts, msg, conn, done, error).start(envelope[1], envelope[2])
        return True

    def _limit(self, opts: SmtpOptions) -> int:
        return max(1, opts.max_connections) if self.budgets is None else self.budgets.limit(opts)

    def _may_send(self, opts: SmtpOptions) -> bool:
        return self.budgets is None or self.budgets.may_send(opts)

    def _lane_connection(self, key: str, msg: OutMessage) -> tuple[Connection, tuple] | None:
        """A pooled connection that takes `msg` on the lane, with the envelope's lines;
        None when there is none (one that pipelines not, or refuses the message, goes
        back to the pool as it was: its idle timer still runs)."""
        conn = self._take_idle(key)
        if conn is None:
            return None
        envelope = _envelope(conn, msg) if "PIPELINING" in conn.ext else None
        if envelope is None or envelope[0] is not None:  # lock-step, or refused: the coroutine path
            self._idle.setdefault(key, []).append(conn)
            return None
        return conn, envelope

    def run_queued(self, q: Queued) -> None:
        """A queued job's turn (its place at the gate is held): the lane on a pooled
        connection when one takes it, else the coroutine path."""
        paced = not q.opts.shaped or self._may_send(q.opts)
        found = None if self._closed or not paced else self._lane_connection(q.key, q.msg)
        if found is None:
            resume(self, q.key, q.targets, q.opts, q.msg, q.done, q.error, paced=paced)
            return
        conn, envelope = found
        q.lane(conn).start(envelope[1], envelope[2])

    def chain_behind(self, lane: Lane) -> list[bytes] | None:
        """The commands of the job first in line at `lane`'s gate, to be written behind
        `lane`'s data on its connection, with that job now `lane.next`; None when there is
        none, or it must not go there (see lane.py)."""
        conn, opts = lane.conn, lane.opts
        gate = self._gates.get(lane.key)
        if (gate is None or not gate.waiting or self._closed or opts.lmtp
                or conn.messages >= opts.max_messages_per_connection or not conn.alive or lane.tx.closing):
            return None
        q = gate.waiting[0]
        if not isinstance(q, Queued):
            return None  # a coroutine is first: it keeps its turn
        refused, mail, rcpt_lines = _envelope(conn, q.msg)
        if refused is not None or len(q.msg.data) > _WRITE_BLOCK:
            return None  # its turn comes when this one ends: the coroutine path, or its own lane
        if q.opts.shaped and not self._may_send(q.opts):
            return None  # no token now: it waits for one when its turn comes
        gate.waiting.popleft()
        lane.tx.chain()
        lane.next = q.lane(conn, chained=True)
        conn.messages += 1
        self.chained += 1
        return [mail, *rcpt_lines] if lane.chunking else [mail, *rcpt_lines, b"DATA\r\n"]

    def lane_end(self, key: str, pass_place: bool = True) -> None:
        """A lane's job is answered; its place at the gate goes on (unless the job
        pipelined behind it holds it now)."""
        gate = self._gates.get(key)
        if gate is not None and pass_place:
            gate.pass_on(key, self._gates)
        self.lanes -= 1
        if not self.lanes and self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def metrics_series(self, most: int = 100) -> list[list]:
        """For /metrics (mta.app.metrics), at its once-a-second tick: connections by
        destination key (busy: deliveries holding a place; idle: pooled), the `most` keys
        with most of them; and the shaping budgets' waits."""
        keys = sorted(self._idle.keys() | self._gates.keys(),
                      key=lambda k: -(len(self._idle.get(k, ())) + (g.running if (g := self._gates.get(k)) else 0)))
        out = []
        for k in keys[:most]:
            g = self._gates.get(k)
            out.append(["mta_delivery_connections", {"site": k, "state": "busy"}, g.running if g else 0])
            out.append(["mta_delivery_connections", {"site": k, "state": "idle"}, len(self._idle.get(k, ()))])
        if self.budgets is not None:
            out += self.budgets.wait_series()
        return out + self.tls.series()

    async def settle(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the callback lane's transactions to end."""
        if self.lanes:
            self._settled = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._settled], timeout=timeout)

    async def close(self) -> None:
        """QUIT every idle pooled connection; connections in use close when their delivery ends."""
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.quit()
        self._idle.clear()
        await asyncio.sleep(0)

    # -- internals --
    async def deliver_held(self, key, targets, opts, msg, paced: bool = False) -> list[RcptResult]:
        """`deliver` for a job that holds its place at the destination's gate (the lane's
        jobs that must take a coroutine): a pooled connection, else each target in turn.
        `paced`: its message token is taken already (else it waits for one here, in order)."""
        budgets = self.budgets
        if budgets is not None and opts.shaped:
            if (until := budgets.suspended(opts)):
                return suspended_results(msg, opts.shape_key, until)
            if not paced:
                await budgets.message(opts)
        while (conn := self._take_idle(key)) is not None:
            try:
                results = await self._run(conn, opts, msg)
            except Stale:
                conn.abort()
                continue
            self.release(key, conn, opts)
            self.connections_reused += 1
            return results
        last: tuple[_Failure, Target] | None = None
        for target in targets:
            try:
                conn = await self._connect(target, opts)
            except _Failure as f:
                last = (f, target)
                continue
            results = await self._run(conn, opts, msg)  # a fresh connection is never Stale
            self.release(key, conn, opts)
            return results
        if last is None:
            return results_for(msg, 451, "4.4.1", "no address to deliver to")
        f, t = last
        return results_for(msg, 451, f.enhanced, f.text, t.host, t.ip,
                           tls="failed" if f.tls else None, tls_failure=f.tls)

    async def _run(self, conn: Connection, opts: SmtpOptions, msg: OutMessage) -> list[RcptResult]:
        try:
            return await self._transaction(conn, opts, msg)
        except BaseException:
            conn.abort()  # cancelled or a bug: the conversation state is unknown
            raise

    async def _send_data(self, conn: Connection, parts: list[bytes]) -> None:
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

    async def _send_stored(self, conn: Connection, stored, chunking: bool) -> None:
        """A big message from the spool (`_native.StoredMessage`) in blocks, encoded for
        the wire as they are read, each drained within data_block_timeout: nothing holds
        it whole. BDAT needs the length first: one more read of it, counting."""
        if chunking:
            conn.write(b"BDAT %d LAST\r\n" % stored.wire_length(False))
        reader = stored.open(wire=not chunking)
        while block := reader.read(_WRITE_BLOCK):
            conn.write(block)
            await conn.drain(self.data_block_timeout, "the message")

    def _take_idle(self, key: str) -> Connection | None:
        conns = self._idle.get(key)
        while conns:
            c = conns.pop()
            if not conns:
                del self._idle[key]
            if c.alive:
                return c  # its idle timer stays armed; it checks on firing (_expire)
            c.abort()
        return None

    def release(self, key: str, conn: Connection, opts: SmtpOptions) -> None:
        if (self._closed or not conn.alive or conn.messages >= opts.max_messages_per_connection
                or conn.unread):  # a reply to no command: out of sync
            conn.quit()
            return
        self._idle.setdefault(key, []).append(conn)
        conn.idle_since = conn.loop.time()
        if conn.idle_timer is None:
            # One timer per connection, re-armed lazily: a pooled connection is taken
            # and released once per message, and a cancel + call_later each time cost more.
            conn.idle_timer = conn.loop.call_later(self._idle_check(conn, opts.idle_timeout), self._expire,
                                                   key, conn, opts.idle_timeout)

    def _idle_check(self, conn: Connection, left: float) -> float:
        """When an idle connection is next looked at: at its idle timeout, or sooner when it
        holds a shared slot (Budgets.want_poll)."""
        return min(left, self.budgets.want_poll) if conn.on_lost is not None else left

    def _expire(self, key: str, conn: Connection, timeout: float) -> None:
        conn.idle_timer = None
        conns = self._idle.get(key)
        if conns is None or conn not in conns:
            return  # in use (re-armed at its release) or gone
        idle = conn.loop.time() - conn.idle_since
        if idle < timeout and not (conn.on_lost is not None and self.budgets.wanted(conn.shape_key)):
            conn.idle_timer = conn.loop.call_later(self._idle_check(conn, timeout - idle), self._expire, key,
                                                   conn, timeout)
            return
        conns.remove(conn)
        if not conns:
            del self._idle[key]
        conn.quit()

    # -- opening a connection: connect, greeting, EHLO, STARTTLS, AUTH --
    async def _connect(self, target: Target, opts: SmtpOptions) -> Connection:
        try:
            return await self._open(target, opts, use_tls=opts.tls != "none")
        except _Failure as f:
            if not (f.tls and opts.tls == "opportunistic"):
                raise
        return await self._open(target, opts, use_tls=False)  # once more, in clear

    async def _open(self, target: Target, opts: SmtpOptions, *, use_tls: bool) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection(target, loop)
        conn.shape_key = opts.shape_key
        if self.budgets is not None and await self.budgets.slot(opts, self._close_idle):
            conn.on_lost = lambda: self.budgets.free(opts.shape_key)
        try:
            async with asyncio.timeout(opts.connect_timeout):
                if target.ip == "unix":
                    await loop.create_unix_connection(lambda: conn, target.host)
                else:
                    local = (opts.source_address, 0) if opts.source_address else None
                    await loop.create_connection(lambda: conn, target.ip, target.port, local_addr=local)
        except TimeoutError:
            conn.lost()
            raise _Failure("4.4.1", f"connection to {conn.name} timed out") from None
        except OSError as e:
            conn.lost()
            raise _Failure("4.4.1", f"connection to {conn.name} failed: {e.strerror or e}") from None
        except BaseException:
            conn.lost()
            raise
        self.connections_opened += 1
        try:
            await self._handshake(conn, opts, use_tls)
        except ConnError as e:
            conn.abort()
            raise _Failure("4.4.2", f"{conn.name}: {e}") from None
        except BaseException:
            conn.abort()
            raise
        return conn

    def _close_idle(self, shape_key: str) -> bool:
        """QUIT one idle pooled connection holding a slot of `shape_key` (its slot comes
        back when it closes); False when there is none."""
        for key, conns in self._idle.items():
            for c in conns:
                if c.shape_key == shape_key:
                    conns.remove(c)
                    if not conns:
                        del self._idle[key]
                    c.quit()
                    return True
        return False

    async def _handshake(self, conn: Connection, opts: SmtpOptions, use_tls: bool) -> None:
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
                ctx = await self._tls(conn, opts)
                await self._hello(conn, opts)  # the TLS 1.3 ticket has come by its reply
                self.tls.established(ctx, conn.transport.get_extra_info("ssl_object"))
            elif opts.tls == "required":
                conn.quit()
                raise _Failure("4.7.5", f"{conn.name} refused STARTTLS: {r}", tls="starttls-not-supported")
        if opts.tls == "required" and not conn.tls and not unix:
            conn.quit()
            raise _Failure("4.7.5", f"TLS is required but {conn.name} does not offer STARTTLS",
                           tls="starttls-not-supported")
        if opts.auth:
            await self._auth(conn, opts)

    async def _hello(self, conn: Connection, opts: SmtpOptions) -> None:
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

    async def _tls(self, conn: Connection, opts: SmtpOptions) -> ClientContext:
        host, ip = conn.target.host, conn.target.ip
        verify = opts.tls == "required"
        try:
            ctx = self.tls.context(verify, opts.ca_file, opts.tls_engine)
        except (ssl.SSLError, OSError) as e:
            conn.abort()
            raise _Failure("4.7.5", f"TLS with {conn.name} failed: cannot load {opts.ca_file}: {e}",
                           tls="validation-failure") from None
        # Verified TLS checks the name `host`. Otherwise the name only picks the session to
        # offer and is sent as SNI when it is not an address (OpenSSL sends none for one).
        name = host if verify or (host and host != ip) else ip
        try:
            await conn.start_tls(ctx, name, self.starttls_timeout)
        except (ssl.SSLError, ssl.CertificateError, OSError, TimeoutError, ConnectionError, ValueError) as e:
            conn.abort()  # (ValueError: a name rustls cannot take as a server name)
            raise _Failure("4.7.5", f"TLS with {conn.name} failed: {e}", tls=_tls_failure_type(e)) from None
        conn.verified = verify
        return ctx

    async def _auth(self, conn: Connection, opts: SmtpOptions) -> None:
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
    async def _transaction(self, conn: Connection, opts: SmtpOptions,
                           msg: OutMessage) -> list[RcptResult]:
        """The Rust `ClientTransaction` decides (as on the lane); this does the I/O: the
        commands (the batch at once, or lock-step one by one), each reply awaited with its
        timeout, the data. A ConnError fails the undecided recipients with 451 4.4.2."""
        tls = conn.tls_state
        refused, mail, rcpt_lines = _envelope(conn, msg)
        if refused is not None or not msg.recipients:
            return refused or []
        reused = conn.messages > 0
        conn.messages += 1
        chunking = "CHUNKING" in conn.ext
        pipelining = "PIPELINING" in conn.ext
        tx = _native.ClientTransaction(len(msg.recipients), reset=reused, chunking=chunking, lmtp=opts.lmtp,
                                       pipelining=pipelining)
        # the command batch, as tx counts it (tx.command is an index into it)
        cmds = [b"RSET\r\n", mail, *rcpt_lines] if reused else [mail, *rcpt_lines]
        if not chunking:
            cmds.append(b"DATA\r\n")
        try:
            if pipelining:
                conn.write(b"".join(cmds))
            await self._converse(conn, tx, cmds, msg, chunking)
        except ConnError as e:
            conn.abort()
            tx.fail(f"{conn.name}: {e}")
        target = conn.target
        return [RcptResult(*row) for row in tx.rows(msg.recipients, target.host, target.ip, tls)]

    async def _converse(self, conn: Connection, tx: _native.ClientTransaction, cmds: list[bytes],
                        msg: OutMessage, chunking: bool) -> None:
        """Do what `tx` says until it is done: write (lock-step), await and feed each reply,
        send the data. Raises Stale (RSET refused or the connection dead at it), ConnError."""
        step = WAIT
        while not tx.done:
            if step == WAIT:
                what = tx.waiting_for
                if (i := tx.command) is not None:
                    conn.write(cmds[i])  # lock-step: one command, then its reply
                try:
                    r = await conn.reply(getattr(self, TIMEOUT_FOR[what]), what)
                except ConnError:
                    if what == "RSET":
                        raise Stale() from None
                    raise
                step = tx.on_reply(r)
            elif step == SEND_DATA:
                step = WAIT
                if not await self._send_message(conn, msg, chunking):
                    tx.fail("cannot read the message from the spool", enhanced="4.3.0")
            elif step == SEND_EMPTY_END:
                # a server that said 354 although nothing was accepted: end it empty
                conn.write(b".\r\n")
                step = WAIT
            elif step == STALE:
                raise Stale()
            else:  # a reply is awaited only when one is owed: cannot happen
                raise ConnError("the server sent a reply to no command")

    async def _send_message(self, conn: Connection, msg: OutMessage, chunking: bool) -> bool:
        """The data phase; False (the connection aborted) when the spool could not be read:
        no end of data was sent."""
        data = msg.data
        if type(data) is bytes:
            await self._send_data(conn, data_parts(data, chunking=chunking))
            return True
        try:
            await self._send_stored(conn, data, chunking)
        except _native.SpoolError as e:  # gone or damaged
            log.error("cannot read %s from the spool: %s", msg.queue_id, e)
            conn.abort()
            return False
        return True


def _envelope(conn: Connection, msg: OutMessage) -> tuple[list[RcptResult] | None, bytes, list[bytes]]:
    """(None, MAIL line, RCPT lines) for this peer, or (the results, b"", []) when the
    message must not go to it: too big for its SIZE, or needing SMTPUTF8 it lacks."""
    ext = conn.ext
    host, ip, tls = conn.target.host, conn.target.ip, conn.tls_state
    limit = ext.get("SIZE", "")
    if limit.isdigit() and 0 < int(limit) < len(msg.data):
        return results_for(msg, 552, "5.3.4",
                           f"message size {len(msg.data)} exceeds the limit of {conn.name} ({limit})",
                           host, ip, tls=tls), b"", []
    utf8 = msg.smtputf8 or not _ascii(msg)
    if utf8 and "SMTPUTF8" not in ext:
        return results_for(msg, 550, "5.6.7", f"{conn.name} does not support SMTPUTF8, which this message needs",
                           host, ip, tls=tls), b"", []
    try:
        mail, rcpts = _native.envelope_lines(msg.sender, msg.recipients, len(msg.data) if "SIZE" in ext else None,
                                             msg.body if "8BITMIME" in ext else None, utf8, msg.ret, msg.envid,
                                             "DSN" in ext)
        return None, mail, rcpts
    except ValueError as e:  # never from our own receive path, which refuses such addresses
        return results_for(msg, 550, "5.1.3", str(e), host, ip, tls=tls), b"", []


def _ascii(msg: OutMessage) -> bool:
    return msg.sender.isascii() and all(r.address.isascii() for r in msg.recipients)
