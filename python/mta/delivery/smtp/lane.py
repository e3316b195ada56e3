"""The SMTP client's callback lane: one transaction on a pooled PIPELINING connection,
decided by the Rust `ClientTransaction` with no task or coroutine; it answers exactly once,
and a job with nothing decided at the server when the connection fails takes the coroutine path."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from mta import _native
from mta.delivery import OutMessage
from mta.delivery.smtp.protocol import Connection, data_parts

log = logging.getLogger("mta.delivery")

# Steps of ClientTransaction.feed (rust/src/bindings/smtp.rs).
WAIT, SEND_DATA, SEND_EMPTY_END, DONE, STALE, UNEXPECTED, GARBAGE = range(7)

# The reply awaited (ClientTransaction.waiting_for) -> the SmtpDelivery timeout for it;
# both ways of running a transaction (this lane and SmtpDelivery._transaction) use it.
TIMEOUT_FOR = {
    "RSET": "rset_timeout",
    "MAIL FROM": "mail_timeout",
    "RCPT TO": "rcpt_timeout",
    "DATA": "data_init_timeout",
    "the end of data": "data_done_timeout",
}

Rows = list[tuple]  # RcptResult-shaped tuples, one per recipient


# The Rust `ClientTransaction` decides here what it decides for `SmtpDelivery._transaction`
# (tests/test_delivery_lane.py runs both against the same peers); this lane only does the
# I/O on callbacks. A reply that no command is owed is an error here (the connection is
# out of sync and is not reused). A pooled connection found dead or refusing RSET
# hands the message to the coroutine path with its place at the gate, as
# `SmtpDelivery.deliver_held` retries on the next connection. A job that finds every
# connection of its destination in use waits at the gate (`Queued`) and then runs here
# on the connection its place comes with. A job queued there when a transaction sends
# its data is pipelined behind it on the same connection (RFC 2920 lets MAIL, RCPT and
# DATA follow the message content in one group): one round trip per message instead of
# two, and no RSET. Until its first reply is decided, such a job has had no effect at
# the server: if the connection fails meanwhile it takes the coroutine path, as a stale
# pooled connection's job does.
class Lane:
    """One transaction; `done(rows)` or `error(text)` is called exactly once."""

    __slots__ = ("smtp", "key", "targets", "opts", "msg", "conn", "tx", "done", "error",
                 "sending", "chunking", "tls", "chained", "next", "parser")

    def __init__(self, smtp, key: str, targets, opts, msg: OutMessage, conn: Connection,
                 done: Callable[[Rows], object], error: Callable[[str], object], chained: bool = False) -> None:
        self.smtp, self.key, self.targets, self.opts, self.msg = smtp, key, targets, opts, msg
        self.conn = conn
        self.chunking = "CHUNKING" in conn.ext
        self.tx = _native.ClientTransaction(len(msg.recipients), reset=not chained, chunking=self.chunking,
                                            lmtp=opts.lmtp)
        self.done, self.error = done, error
        self.sending = False  # the data is written but not yet drained
        self.tls = conn.tls_state
        self.chained = chained  # pipelined behind another transaction's data: no RSET
        self.next: Lane | None = None  # the transaction pipelined behind this one
        self.parser = conn.parser.native  # the connection's Rust reply parser, which tx feeds

    def start(self, mail: bytes, rcpt_lines: list[bytes]) -> None:
        """One write for what the transaction owes replies to (as self.tx was made)."""
        conn = self.conn
        conn.lane = self
        conn.messages += 1
        conn.transport.write(b"".join([b"RSET\r\n", mail, *rcpt_lines, b"" if self.chunking else b"DATA\r\n"]))
        conn.arm(self.smtp.rset_timeout)

    # -- the connection's events ------------------------------------------------

    # Each runs inside a transport or timer callback: a bug in one is caught and ends
    # the job with an error (the worker defers it), never leaving it without an answer.

    def data(self, data: bytes) -> None:
        try:
            self._step(self.tx.feed(self.parser, data), data)
        except Exception:  # noqa: BLE001
            self._bug()

    def failed(self) -> None:
        """The connection failed (closed, lost); its reason is conn.error."""
        try:
            why = self.conn.error
            if self.sending:
                self._fail(f"{why} while sending the message")
            else:
                self._broken(why)
        except Exception:  # noqa: BLE001
            self._bug()

    def resumed(self) -> None:
        if self.sending:
            self.sending = False
            self.conn.arm(self.smtp.data_done_timeout)

    def timed_out(self) -> None:
        try:
            self.conn.broken = True
            if self.sending:
                self._fail("timed out while sending the message")
            elif self._undecided():
                self._stale()
            else:
                self._fail(f"timed out waiting for the reply to {self.tx.waiting_for}")
        except Exception:  # noqa: BLE001
            self._bug()

    def adopted(self, prev) -> None:
        """The transaction before this one on the connection is done: decide on the
        replies that came behind its last (they may be this one's first)."""
        try:
            self.tx.adopt(prev)
            self._step(self.tx.feed(self.parser, b""), b"")
        except Exception:  # noqa: BLE001
            self._bug()

    # -- steps ------------------------------------------------------------------

    def _undecided(self) -> bool:
        """Nothing of this job has happened at the server: a failure now hands it to
        the coroutine path instead of deferring it."""
        return self.tx.waiting_for == "RSET" or (self.chained and self.tx.untouched)

    def _step(self, step: int, data: bytes) -> None:
        conn, smtp = self.conn, self.smtp
        if step == WAIT:
            conn.arm(getattr(smtp, TIMEOUT_FOR[self.tx.waiting_for]))
        elif step == SEND_DATA:
            self._send_data()
        elif step == SEND_EMPTY_END:
            conn.transport.write(b".\r\n")
            conn.arm(smtp.data_done_timeout)
        elif step == DONE:
            if self.tx.closing:
                conn.broken = True  # a 421: the server is going away
            parse_error = self.parser.error
            if parse_error is not None:  # garbage after the last reply: decided, not reusable
                conn.broke(f"{parse_error}: {data[:80]!r}")
                conn.broken = True
            self._finish()
        elif step == STALE:
            self._stale()
        elif step == UNEXPECTED and self.tx.done:
            conn.broken = True  # decided, but out of sync: never reused
            self._finish()
        elif step == UNEXPECTED:
            self._broken("the server sent a reply to no command")
        else:  # GARBAGE
            self._broken(f"{self.parser.error}: {data[:80]!r}")

    def _send_data(self) -> None:
        conn = self.conn
        parts = data_parts(self.msg.data, chunking=self.chunking)
        nxt = self.smtp.chain_behind(self)
        if nxt is not None:
            parts.extend(nxt)
        conn.transport.writelines(parts)
        if conn.paused:
            self.sending = True
            conn.arm(self.smtp.data_block_timeout)
        else:
            conn.arm(self.smtp.data_done_timeout)

    def _broken(self, why: str) -> None:
        """The conversation broke while a reply was awaited (the coroutine path's ConnError)."""
        self.conn.broke(why)
        self.conn.broken = True
        if self._undecided():
            self._stale()
        else:
            self._fail(f"{why} while waiting for the reply to {self.tx.waiting_for}")

    def _fail(self, why: str) -> None:
        self.tx.fail(f"{self.conn.name}: {why}")
        self._finish(abort=True)

    def _finish(self, abort: bool = False) -> None:
        conn, smtp = self.conn, self.smtp
        target = conn.target
        rows = self.tx.rows(self.msg.recipients, target.host, target.ip, self.tls)
        conn.lane = None  # from here on the job is answered: _bug leaves it alone
        if abort:
            conn.abort()
        smtp.connections_reused += 1
        if self.next is None:
            smtp.release(self.key, conn, self.opts)
            smtp.lane_end(self.key)
        else:  # closing (a 421), out of sync or failed: nothing of the next one was decided
            self._hand_on(conn.alive)
        self.done(rows)

    def _hand_on(self, usable: bool) -> None:
        """This one is answered; the job pipelined behind it takes its place at the gate
        and goes on here (`usable`) or, undecided, on the coroutine path."""
        nxt = self.next
        self.smtp.lane_end(self.key, pass_place=False)
        if usable:
            self.conn.lane = nxt
            nxt.adopted(self.tx)
        else:
            nxt._stale()

    def _stale(self) -> None:
        """Dead or refusing RSET (or failed before a job pipelined behind another had
        its first reply): nothing was decided; the coroutine path takes over."""
        self.conn.lane = None
        self.conn.abort()
        resume(self.smtp, self.key, self.targets, self.opts, self.msg, self.done, self.error)

    def _bug(self) -> None:
        log.exception("delivery lane: transaction for %s failed", self.msg.queue_id)
        conn = self.conn
        if conn.lane is not self:
            return  # it had already ended (done or handed to the coroutine path): answered once
        conn.lane = None
        conn.abort()
        if self.next is not None:  # its commands went on this connection: it starts again elsewhere
            self._hand_on(False)
        else:
            self.smtp.lane_end(self.key)
        self.error("internal error in the delivery lane")


class Queued:
    """A job for the lane that found every connection of its destination in use
    (SmtpDelivery.submit): it waits at the gate, in order with the coroutines waiting
    there, and `start()` runs when a finishing delivery hands it its place, usually
    with that delivery's connection back in the pool."""

    __slots__ = ("smtp", "key", "targets", "opts", "msg", "done", "error")

    def __init__(self, smtp, key: str, targets, opts, msg: OutMessage,
                 done: Callable[[Rows], object], error: Callable[[str], object]) -> None:
        self.smtp, self.key, self.targets, self.opts, self.msg = smtp, key, targets, opts, msg
        self.done, self.error = done, error

    def lane(self, conn: Connection, chained: bool = False) -> Lane:
        """Its transaction on `conn` (which it has the place for)."""
        return Lane(self.smtp, self.key, self.targets, self.opts, self.msg, conn, self.done, self.error,
                    chained=chained)

    def start(self) -> None:
        try:
            self.smtp.run_queued(self)
        except Exception:  # noqa: BLE001 - answered once, and the place goes on
            log.exception("delivery lane: queued transaction for %s failed", self.msg.queue_id)
            self.smtp.lane_end(self.key)
            self.error("internal error in the delivery lane")


def resume(smtp, key: str, targets, opts, msg: OutMessage, done: Callable[[Rows], object],
           error: Callable[[str], object], paced: bool = True) -> None:
    """The coroutine path for a job of the lane that holds its place at the gate
    (`paced`: its message token is taken already)."""
    task = asyncio.get_running_loop().create_task(smtp.deliver_held(key, targets, opts, msg, paced))

    def ended(t: asyncio.Task) -> None:
        smtp.lane_end(key)
        if t.cancelled():
            error("CancelledError: delivery cancelled")
        elif (e := t.exception()) is not None:
            error(f"{type(e).__name__}: {e}")
        else:
            done([tuple(r) for r in t.result()])
    task.add_done_callback(ended)
