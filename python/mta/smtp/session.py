"""One SMTP server session: an asyncio Protocol driven by the Rust parser, its
commands dispatched by the table `TABLE[state][verb]` (a missing verb is a 503).
Invariant: "250 queued" goes out only after the store made the message durable."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from mta import _native
from mta import log as fastlog
from mta import plugin
from mta.smtp.limits import SessionGuard
from mta.smtp.replies import (
    R_AUTH_REQUIRED, R_BAD_SEQUENCE, R_BYE, R_DATA_AFTER_BDAT, R_DATA_GO, R_EARLY, R_HELO_FIRST, R_HELP, R_HTTP,
    R_IDLE, R_MAIL_OK, R_NESTED_MAIL, R_NO_ROOM, R_OK, R_RCPT_OK, R_SHUTDOWN, R_SIZE_EXCEEDED, R_TOO_MANY_ERRORS,
    R_TOO_MANY_RCPTS, R_VRFY, SEQUENCE, line,
)
from mta.smtp.accept import AcceptMixin
from mta.smtp.counts import (
    ACCEPTED, CONNECT_BASE, EARLY_TALKER, OTHER_BASE, REFUSED_LIMIT, REFUSED_POLICY, VERB_BASE, by_verb_counts,
    listener_counts,
)
from mta.smtp.stages import StagesMixin
from mta.smtp.starttls import StartTlsMixin
from mta.smtp.state import BDAT_OPEN, CLOSED, FRESH, GREETING, MAIL_GIVEN, RCPT_GIVEN, READY, State
from mta.smtp.submission import SubmissionMixin
from mta.smtp.tls import TlsInfo

if TYPE_CHECKING:
    from mta.auth.guard import AuthGuard
    from mta.auth.users import UserDB
    from mta.config.schema import Listener
    from mta.smtp.limits import Limits
    from mta.smtp.proxy import ProxyGate
    from mta.smtp.rdns import ReverseResolver
    from mta.smtp.seams import AcceptStore, Hooks, OnDurable, Trust, SessionSettings
    from mta.smtp.tls import TlsContext

log = logging.getLogger("mta.session")


class Transaction(plugin.Transaction):
    """What RSET forgets: the envelope and the message being received (the plugins' `tx`)."""

    __slots__ = ("rcpts", "final", "queue_id", "message", "started", "size", "received", "data_verdict", "view")

    def __init__(self, conn, mail):
        # plugin.Transaction's fields, set here: one __init__ call per transaction, not two
        self.conn = conn
        self.mail = mail
        self.sender = mail.address
        self.recipients = []
        self.notes = {}
        self.expansion = []
        self.hold = False
        self.data_verdict = None  # on_data's answer: None, a refusal, or a task ending with one
        self.view = None  # the message view handed to on_message
        self.rcpts: list = []  # as the client gave them
        self.final: list[tuple] = []  # after alias/virtual expansion: (address, notify, orcpt)
        self.queue_id: str | None = None
        self.message = None
        self.started = time.time()
        self.size = 0
        self.received = b""  # our Received header, when it waits for the submission fix-up


class Session(SubmissionMixin, StagesMixin, StartTlsMixin, AcceptMixin, asyncio.Protocol):
    # Slots: no instance dict (a session is made per connection and its ~55
    # attributes are read on every command).
    __slots__ = (
        # collaborators (shared by the sessions of a listener)
        "settings", "loop", "store", "on_durable", "policy", "hooks", "limits", "sessions", "rdns", "proxy_gate",
        "tls", "users", "auth_guard", "replies", "counts",
        # this connection
        "listener", "profile", "tls_mode", "tls_info", "_tls_busy", "_tls_task",
        "parser", "state", "transport", "peer_ip", "peer_port", "trusted", "rname", "helo", "esmtp",
        "tx", "errors", "messages", "commands", "_out", "_queue", "_waiting", "_eof", "_closing",
        "_shutdown", "_bdat_refusal", "_bdat_size", "_last_active", "_timers", "_connected_at",
        "guard", "_proxy", "_held", "user", "sasl", "auth_ok", "auth_required",
        # the hook stages (mta.smtp.stages)
        "conn", "_pending_then", "_watching", "_data_wait", "_hooked_end",
        # replies by verb (mta.smtp.counts): the verb's row, and the replies in _out counted already
        "_vbase", "_vmark",
    )

    def __init__(
        self,
        listener: Listener | None,
        settings: SessionSettings,
        loop: asyncio.AbstractEventLoop,
        store: AcceptStore,
        on_durable: OnDurable,
        policy: Trust,
        hooks: Hooks,
        limits: Limits,
        sessions: set,
        rdns: ReverseResolver | None = None,
        proxy_gate: ProxyGate | None = None,
        tls: TlsContext | None = None,
        users: UserDB | None = None,
        auth_guard: AuthGuard | None = None,
        replies: list[int] | None = None,
        counts: list[int] | None = None,
    ):
        # Made per connection by the wiring's factory; the collaborators are shared.
        # `loop` is kept because asyncio.get_running_loop() costs a getpid() per call;
        # `rdns` is None when reverse DNS is off; `sessions` is the set the server's
        # idle sweep and stop walk.
        self.settings = settings
        self.loop = loop
        self.store = store
        self.on_durable = on_durable
        self.policy = policy
        self.hooks = hooks  # the chain: built-in policies, then the plugins (mta.policy.chain)
        self.limits = limits
        self.sessions = sessions
        self.rdns = rdns
        self.proxy_gate = proxy_gate
        self.tls = tls
        self.users = users
        self.auth_guard = auth_guard
        # Replies sent by verb and first digit, shared by the worker's sessions; this
        # listener's connection outcomes and bytes accepted (mta.smtp.counts, mta.app.metrics).
        self.replies = replies if replies is not None else by_verb_counts()
        self.counts = counts if counts is not None else listener_counts()
        self._vbase = CONNECT_BASE
        self._vmark = 0
        self.listener = listener
        self.profile = listener.profile if listener else "mx"  # "mx" | "submission"
        tls_mode = listener.tls if listener else "none"
        if tls is None:
            tls_mode = "none"
        self.tls_mode = tls_mode  # "starttls" | "implicit" | "none"
        self.tls_info: TlsInfo | None = None  # set once a TLS handshake completed
        self._tls_busy = False  # between "220 Ready to start TLS" and the handshake's end
        self._tls_task: asyncio.Task | None = None
        self.parser = self._new_parser()
        self.state = GREETING
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.peer_port = 0
        self.trusted = False
        self.rname: str | None = None
        self.helo = ""
        self.esmtp = False
        self.tx: Transaction | None = None
        self.errors = 0
        self.messages = 0
        self.commands = 0
        self._out: list[bytes] = []
        self._queue: deque = deque()
        self._waiting = False  # a message is being made durable
        self._eof = False  # the client half-closed while a message was being stored
        self._closing = False
        self._shutdown = False
        self._bdat_refusal: bytes | None = None
        self._bdat_size = 0
        self._last_active = time.monotonic()
        self._timers: list[asyncio.TimerHandle] = []
        self._connected_at = time.monotonic()
        self.guard = SessionGuard(limits.cfg)  # abuse limits (mta.limits)
        self._proxy = None  # a _native.ProxyParser while the PROXY header is awaited
        self._held = False  # an error reply is being tarpitted: write and read nothing
        self.user: str | None = None  # the authenticated login (mta.submission)
        self.sasl = None  # an AUTH exchange in progress
        self.auth_ok = False  # AUTH is offered now: submission, TLS, a user file
        # MAIL needs AUTH first: a submission listener with a user file (mta.submission).
        self.auth_required = self.profile == "submission" and users is not None
        self.conn: plugin.Connection | None = None  # made once the client's address is known
        self._pending_then = None  # (continuation, its argument) while a stage's hooks work
        self._watching = False  # on_data waits for the header block of the message coming in
        self._data_wait = None  # the transaction whose end of data waits for on_data
        self._hooked_end = bool(hooks.on_data or hooks.on_message)

    def _new_parser(self):
        settings = self.settings
        return _native.SmtpParser(
            max_line=settings.max_line_length,
            max_message_size=settings.max_message_size,
            bare_lf=settings.bare_lf,
        )

    # --- connection -----------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer_ip, self.peer_port = peer[0], peer[1]
        # On an implicit-TLS listener the handshake is already done here.
        self.tls_info = TlsInfo.of(transport) if self.tls_mode == "implicit" else None
        if self.auth_required:  # (otherwise __init__ left nothing for _auth_setup to do)
            self._auth_setup()
        self.sessions.add(self)  # the server's idle sweep watches it from now on
        if self.listener is not None and self.listener.proxy:
            self._proxy_start()
        else:
            self._admit()

    def _admit(self) -> None:
        """The client's address is known (the socket's, or the PROXY header's):
        trust, connection limits, reverse DNS, then the greeting."""
        limits = self.limits
        self.trusted = self.policy.trusted(self.peer_ip)
        self.guard.enable(limits.applies(self.trusted))
        refusal = limits.admit(self.peer_ip, self.guard.on)
        if refusal is not None:
            fastlog.info(f"refused [{self.peer_ip}]: {refusal.decode().strip()}")
            self.counts[REFUSED_LIMIT] += 1
            self._limit_close(refusal)
            return
        self.guard.counted_ip = self.peer_ip
        if self.rdns is not None and self.peer_ip:
            fut = self.rdns.lookup(self.peer_ip)
            if fut.done():
                self._rdns_done(fut)  # a failed lookup leaves rname None
            else:
                fut.add_done_callback(self._rdns_done)
        conn = self.conn = plugin.Connection(self.peer_ip, self.peer_port, self.listener, self.trusted)
        conn.tls = self.tls_info
        if self.hooks.on_connect:
            v = self.hooks.run(self.hooks.on_connect, (conn,))
            if v is None or not self._later(v, self._connected, None):
                self._connected(None, v)
        else:
            self._connected(None, None)

    def _connected(self, _arg, v) -> None:
        """on_connect answered: the greeting, or the refusal instead of it (then close)."""
        if v is not None:
            fastlog.info(f"refused by policy [{self.peer_ip}]: {v.code} {v.enhanced} {v.text}")
            self.counts[REFUSED_POLICY] += 1
            self._limit_close(v.reply)
            return
        delay = 0.0 if self.trusted else self.settings.greeting_delay
        if delay > 0:
            self._timers.append(self.loop.call_later(delay, self._greet))
        else:
            self._greet()

    def _proxy_start(self) -> None:
        if not self.proxy_gate.accepts(self.peer_ip):
            log.warning("PROXY protocol: connection from [%s], not in proxy_from; closed", self.peer_ip)
            self._close()
            return
        self._proxy = self.proxy_gate.parser()

    def _proxy_data(self, data: bytes) -> None:
        proxy = self._proxy
        try:
            header = proxy.feed(data)
        except ValueError as e:
            log.warning("PROXY protocol: bad header from [%s]: %s; closed", self.peer_ip, e)
            self._proxy = None
            self._close()
            return
        if header is None:
            return
        self._proxy = None
        if header[0] == "proxy":
            fastlog.info(f"proxied connection from [{header[1]}]:{header[2]} via [{self.peer_ip}]")
            self.peer_ip, self.peer_port = header[1], header[2]
        self._admit()
        if proxy.rest and not self._closing:
            self.data_received(proxy.rest)  # talking before the greeting

    def _limit_close(self, reply: bytes) -> None:
        """A limit was hit: this reply, then the connection is closed."""
        self._out.append(reply)
        self._close()

    def _rdns_done(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.rname = fut.result()

    def _greet(self) -> None:
        if self.state is not GREETING:
            return
        self.state = FRESH
        greeting = self.settings.greeting
        self.replies[CONNECT_BASE + greeting[0]] += 1
        self.counts[ACCEPTED] += 1
        self.transport.write(greeting)

    def idle_check(self, now: float, timeout: float) -> None:
        """From the server's sweep (one timer for all sessions: a timer armed and
        cancelled per connection was a measurable part of a short session)."""
        if self.state is CLOSED:
            return
        if self._proxy is not None:  # no PROXY header in time: nothing to say to a proxy
            if now - self._connected_at >= timeout:
                self._close()
            return
        if self._waiting or now - self._last_active < timeout:
            return
        self._out.append(R_IDLE)
        self._close()

    def connection_lost(self, exc) -> None:
        if self.state is CLOSED:
            return  # a failed handshake may report the loss twice
        self.state = CLOSED
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        self.sessions.discard(self)
        if self.guard.timer is not None:
            self.guard.data_stopped()
        if self.guard.counted_ip is not None:
            self.limits.release(self.guard.counted_ip)
            self.guard.counted_ip = None
        self.tx = None
        fastlog.info(
            f"disconnect from {self.rname or 'unknown'}[{self.peer_ip}] helo={self.helo or '-'}"
            f" commands={self.commands} messages={self.messages} errors={self.errors}"
            f" tls={self.tls_info.version + '/' + self.tls_info.cipher if self.tls_info else '-'}"
            f" time={time.monotonic() - self._connected_at:.3f}s"
        )

    def data_received(self, data: bytes) -> None:
        if self._closing or self._tls_busy:
            return  # plaintext behind STARTTLS is never executed
        if self._proxy is not None:
            self._proxy_data(data)
            return
        if self.state is GREETING:
            self.counts[EARLY_TALKER] += 1
            self._out.append(R_EARLY)
            self.errors += 1
            self._close()
            return
        self._last_active = time.monotonic()
        if self.guard.timer is not None:  # the data rate is being measured
            self.guard.data_bytes(len(data))
        if self._waiting:
            # Bytes behind a message being stored: this read is parsed and
            # queued, nothing more is read until the reply is out (bounded memory).
            self.transport.pause_reading()
        events = self.parser.feed(data)
        if self._watching:  # on_data waits for the header block coming in
            self._watch_headers()
        self._run(events)

    def eof_received(self) -> bool | None:
        if self._waiting and not self._closing:
            # Half-closed behind a message being stored: its reply is still owed.
            self._eof = True
            return True
        return None  # close our side too

    # --- the event loop of one session ----------------------------------

    def _run(self, events) -> None:
        queue = self._queue
        queue.extend(events)
        while queue and not self._waiting and not self._closing and not self._held and not self._tls_busy:
            ev = queue.popleft()
            kind = ev[0]
            if kind == "cmd":
                self.commands += 1
                if len(self._out) > self._vmark:  # pipelined: the replies so far answer the verbs before
                    self._tally()
                self._vbase = VERB_BASE.get(ev[1], OTHER_BASE)
                if self.commands > self.guard.commands_free and (
                        refusal := self.guard.command(self.commands)) is not None:
                    self._limit_close(refusal)
                    break
                handler = TABLE[self.state].get(ev[1])
                if handler is None:
                    self._out_of_sequence(ev[1])
                else:
                    handler(self, ev[2])
            elif kind == "line":
                self._sasl_line(ev[1])
            elif kind == "error":
                if len(self._out) > self._vmark:
                    self._tally()
                self._vbase = OTHER_BASE
                if self.sasl is not None:
                    self._sasl_error()
                self._reply(line(ev[1], ev[2], ev[3]), error=True)
            elif kind == "data_end":
                self._message_end(ev[1])
            elif kind == "bdat_end":
                self._bdat_end(ev[1], ev[2])
        if self._out:
            self._flush()

    def _tally(self) -> None:
        """Count the replies in _out not counted yet, under the current verb."""
        out, replies, base = self._out, self.replies, self._vbase
        for i in range(self._vmark, len(out)):
            replies[base + out[i][0]] += 1
        self._vmark = len(out)

    def _flush(self) -> None:
        if self._tls_busy:  # the transport belongs to the TLS layer now
            self._out = []
            self._vmark = 0
            return
        if self._out and self.transport is not None and not self._held:
            out = self._out
            self._out = []
            replies, base = self.replies, self._vbase
            if self._vmark:
                for i in range(self._vmark, len(out)):
                    replies[base + out[i][0]] += 1
                self._vmark = 0
            else:
                for r in out:  # each entry is one reply (multi-line ones included)
                    replies[base + r[0]] += 1
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _reply(self, reply: bytes, error: bool = False) -> None:
        self._out.append(reply)
        if error or reply[0] == 0x35:  # a 5xx reply counts as an error
            self.errors += 1
            if self.errors >= self.settings.max_errors:
                self._out.append(R_TOO_MANY_ERRORS)
                self._close()
            elif delay := self.guard.error_delay(self.errors):
                self._hold(delay)

    def _hold(self, delay: float) -> None:
        """Tarpit: keep this reply (and everything after it) back for `delay`
        seconds without blocking the loop; reading pauses meanwhile."""
        self._held = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._timers.append(asyncio.get_running_loop().call_later(delay, self._release_hold))

    def _release_hold(self) -> None:
        if not self._held or self._closing:
            return
        self._held = False
        self._flush()
        if not self._waiting:
            self.transport.resume_reading()
        self._run(())

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._held = False
        self._queue.clear()
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Server stopping: close now if between transactions, else after it."""
        self._shutdown = True
        if self.tx is None and not self._waiting and not self._closing:
            self._out.append(R_SHUTDOWN)
            self._close()

    def force_close(self) -> None:
        if not self._closing:
            self._out.append(R_SHUTDOWN)
            self._close()

    # --- commands ---------------------------------------------------------

    def _out_of_sequence(self, verb: str) -> None:
        if verb == "BDAT":
            # The chunk must still be read off the wire, then refused.
            self._bdat_refusal = SEQUENCE["BDAT"]
            self._queue.extend(self.parser.start_bdat(None))
            return
        if verb == "DATA":
            self._queue.extend(self.parser.resume())
        if self.state is FRESH:
            refusal = R_HELO_FIRST
        elif verb == "MAIL":
            refusal = R_NESTED_MAIL
        elif verb == "DATA" and self.state is BDAT_OPEN:
            refusal = R_DATA_AFTER_BDAT
        else:
            refusal = SEQUENCE.get(verb, R_BAD_SEQUENCE)
        self._reply(refusal)

    def _ehlo(self, domain: str) -> None:
        v = None
        if self.hooks.on_helo:
            v = self.hooks.run(self.hooks.on_helo, (self.conn, domain))
            if v is not None and self._later(v, self._ehlo_judged, domain):
                return
        self._ehlo_judged(domain, v)

    def _ehlo_judged(self, domain: str, v) -> None:
        if v is not None:
            self._refuse(v)
            return
        self._reset()
        self.helo, self.esmtp = domain, True
        self.conn.helo = domain
        self.state = READY
        if self.tls_mode == "starttls" and self.tls_info is None:
            self._out.append(self.settings.ehlo_reply_starttls)
        elif self.auth_ok:
            self._out.append(self.settings.ehlo_reply_auth)
        else:
            self._out.append(self.settings.ehlo_reply)

    def _helo(self, domain: str) -> None:
        v = None
        if self.hooks.on_helo:
            v = self.hooks.run(self.hooks.on_helo, (self.conn, domain))
            if v is not None and self._later(v, self._helo_judged, domain):
                return
        self._helo_judged(domain, v)

    def _helo_judged(self, domain: str, v) -> None:
        if v is not None:
            self._refuse(v)
            return
        self._reset()
        self.helo, self.esmtp = domain, False
        self.conn.helo = domain
        self.state = READY
        self._out.append(self.settings.helo_reply)

    def _mail(self, m) -> None:
        if (refusal := self.guard.mail(self.messages)) is not None:
            self._limit_close(refusal)
            return
        if self.auth_required and self.user is None:
            self._reply(R_AUTH_REQUIRED)
            return
        if m.size is not None and m.size > self.settings.max_message_size:
            self._reply(R_SIZE_EXCEEDED)
            return
        if not self.store.has_room():
            self._reply(R_NO_ROOM)
            return
        if self._shutdown:
            self._reply(R_SHUTDOWN)
            self._close()
            return
        tx = Transaction(self.conn, m)
        v = None
        if self.hooks.on_mail:
            v = self.hooks.run(self.hooks.on_mail, (tx, m.address))
            if v is not None and self._later(v, self._mail_judged, tx):
                return
        self._mail_judged(tx, v)

    def _mail_judged(self, tx: Transaction, v) -> None:
        if v is not None:
            self._refuse(v)
            return
        self.tx = tx
        if tx.mail.smtputf8:  # (False already: a new parser, or _reset after a transaction with it)
            self.parser.set_smtputf8(True)
        self.state = MAIL_GIVEN
        self._out.append(R_MAIL_OK)

    def _rcpt(self, r) -> None:
        tx = self.tx
        if len(tx.rcpts) >= self.settings.max_recipients:
            self._reply(R_TOO_MANY_RCPTS)
            return
        if (refusal := self.guard.rcpt()) is not None:
            self._reply(refusal)
            return
        # Relay control and the address book first (built-in entries of the chain), then
        # the plugins' on_rcpt.
        v = self.hooks.run(self.hooks.on_rcpt, (tx, r.address))
        if v is not None and self._later(v, self._rcpt_judged, r):
            return
        self._rcpt_judged(r, v)

    def _rcpt_judged(self, r, v) -> None:
        if v is not None:
            self._refuse(v)
            return
        tx = self.tx
        address = r.address  # each read of a parser field makes a new str
        final = tx.expansion
        tx.recipients.append(address)
        tx.rcpts.append(r)
        self.guard.rcpts += 1
        if len(final) == 1 and final[0] == address:
            tx.final.append((address, r.notify, r.orcpt))
        else:
            orcpt = r.orcpt or f"rfc822;{address}"
            notify = r.notify
            tx.final.extend((a, notify, orcpt) for a in final)
        if self.state is MAIL_GIVEN:
            self.state = RCPT_GIVEN
        self._out.append(R_RCPT_OK)

    def _data(self, _arg) -> None:
        self._begin_message()
        self._out.append(R_DATA_GO)
        if self.guard.rate_on:
            self.guard.data_started(self._limit_close)
        self._queue.extend(self.parser.start_data(self.tx.message))

    def _bdat(self, arg) -> None:
        size, _last = arg
        if self.tx.message is None:
            self._begin_message()
            self.state = BDAT_OPEN
            if self.guard.rate_on:
                self.guard.data_started(self._limit_close)
        self._bdat_size = size
        self._queue.extend(self.parser.start_bdat(self.tx.message))

    def _rset(self, _arg) -> None:
        self._reset()
        if self.state is not FRESH:
            self.state = READY
        self._out.append(R_OK)

    def _noop(self, _arg) -> None:
        self._out.append(R_OK)

    def _quit(self, _arg) -> None:
        self._out.append(R_BYE)
        self._close()

    def _vrfy(self, _arg) -> None:
        self._out.append(R_VRFY)

    def _help(self, _arg) -> None:
        self._out.append(R_HELP)

    def _http(self, _arg) -> None:
        self.errors += 1
        self._out.append(R_HTTP)
        self._close()

    # --- message end and the spool ---------------------------------------

    def _reset(self) -> None:
        tx = self.tx
        if tx is None and self._bdat_refusal is None:
            return  # no transaction: nothing to forget (EHLO, HELO, RSET between them)
        self.tx = None
        if self.guard.timer is not None:
            self.guard.data_stopped()
        self._bdat_refusal = None
        self._watching = False
        self._data_wait = None
        if tx is not None and tx.mail.smtputf8:
            self.parser.set_smtputf8(False)

    def _finish_transaction(self) -> None:
        self._reset()
        self.state = READY


# --- the state table --------------------------------------------------------

_TALKING = (FRESH, READY, MAIL_GIVEN, RCPT_GIVEN, BDAT_OPEN)
# TABLE[state][verb]: one dict per state, indexed by the state's number.
TABLE: list[dict[str, Callable]] = [{} for _ in State]
for _s in _TALKING:
    for _verb, _handler in (
        ("EHLO", Session._ehlo),
        ("HELO", Session._helo),
        ("RSET", Session._rset),
        ("NOOP", Session._noop),
        ("QUIT", Session._quit),
        ("VRFY", Session._vrfy),
        ("HELP", Session._help),
        ("STARTTLS", Session._starttls),
        ("AUTH", Session._auth),
        ("HTTP", Session._http),
    ):
        TABLE[_s][_verb] = _handler
TABLE[READY]["MAIL"] = Session._mail
TABLE[MAIL_GIVEN]["RCPT"] = Session._rcpt
TABLE[RCPT_GIVEN]["RCPT"] = Session._rcpt
TABLE[RCPT_GIVEN]["DATA"] = Session._data
TABLE[RCPT_GIVEN]["BDAT"] = Session._bdat
TABLE[BDAT_OPEN]["BDAT"] = Session._bdat
del _s, _verb, _handler
