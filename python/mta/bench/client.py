"""The generator's SMTP side: one Protocol per connection, a state machine driven by the
server's replies, every command and message pre-built as bytes (with PIPELINING, MAIL/RCPT/
DATA in one write). Latency is from the write of the end of data to its reply."""

from __future__ import annotations

import asyncio
import time
from array import array

from mta.delivery.smtp.tlsclient import ResumingContext  # its last session per process (name None)

(S_GREET, S_EHLO, S_HELO, S_TLS, S_TXN, S_BODY, S_RSET, S_QUIT, S_DONE, S_PARK) = range(10)
_mono = time.monotonic


class Shared:
    """One worker's state: tickets (which message comes next), results, the pre-built bytes."""

    def __init__(self, *, total: int, warmup: int, messages: list[bytes], sender: str,
                 recipients: list[str], helo: str, per_connection: int, starttls: bool, bdat: bool,
                 ssl_ctx, timeout: float, duration: float | None) -> None:
        self.total, self.warmup = total, warmup
        self.next_ticket = 0
        self.per_connection = per_connection
        self.starttls, self.bdat, self.ssl_ctx = starttls, bdat, ssl_ctx
        self.resume = isinstance(ssl_ctx, ResumingContext)
        self.tls_full = self.tls_resumed = 0  # completed handshakes, warm-up included
        self.timeout, self.duration = timeout, duration
        self.deadline = float("inf")
        self.ehlo = f"EHLO {helo}\r\n".encode()
        self.helo = f"HELO {helo}\r\n".encode()
        self.cmds = [f"MAIL FROM:<{sender}>\r\n".encode()] + [f"RCPT TO:<{r}>\r\n".encode() for r in recipients]
        self.txn_data = b"".join(self.cmds) + b"DATA\r\n"
        self.txn_bdat_head = b"".join(self.cmds)
        self.bodies = [m + b".\r\n" for m in messages]  # DATA form (no line starts with ".")
        self.bdats = [b"BDAT %d LAST\r\n" % len(m) + m for m in messages]
        self.ok = 0  # measured messages answered 2xx
        self.warm_ok = 0
        self.errors: dict[str, int] = {}
        self.latencies = array("d")
        self.t0 = 0.0  # first measured ticket
        self.t_end = 0.0  # last measured reply
        self.live: set = set()
        # open loop: tickets become due at t_start + i / rate; waiters get them in order
        self.rate = 0.0
        self.t_start = 0.0
        self.waiters: list = []
        self.pump_handle = None
        self.late = 0
        self.max_lag = 0.0

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    # -- tickets -------------------------------------------------------------------------

    def _issue(self) -> int:
        i = self.next_ticket
        self.next_ticket = i + 1
        if i == self.warmup:
            self.t0 = _mono()
            if self.duration:
                self.deadline = self.t0 + self.duration
        return i

    def exhausted(self) -> bool:
        return self.next_ticket >= self.total or _mono() >= self.deadline

    def request(self, cb) -> int | None:
        """A ticket now (closed loop, or open loop with one due), else None: `cb(ticket or
        None)` is called when one is due (None: no more will come)."""
        if self.exhausted():
            return -1
        if not self.rate:
            return self._issue()
        now = _mono()
        due = self.t_start + self.next_ticket / self.rate
        if due <= now and not self.waiters:
            lag = now - due
            if lag > 0.001:
                self.late += 1
                self.max_lag = max(self.max_lag, lag)
            return self._issue()
        self.waiters.append(cb)
        self._arm()
        return None

    def _arm(self) -> None:
        if self.pump_handle is None and self.waiters:
            due = self.t_start + self.next_ticket / self.rate
            self.pump_handle = asyncio.get_running_loop().call_at(due, self._pump)

    def _pump(self) -> None:
        self.pump_handle = None
        now = _mono()
        while self.waiters:
            if self.exhausted():
                waiters, self.waiters = self.waiters, []
                for cb in waiters:
                    cb(-1)
                return
            due = self.t_start + self.next_ticket / self.rate
            if due > now:
                break
            lag = now - due
            if lag > 0.001:
                self.late += 1
                self.max_lag = max(self.max_lag, lag)
            self.waiters.pop(0)(self._issue())
        self._arm()


class Client(asyncio.Protocol):
    """One SMTP connection; `done` resolves when it is over, however it ended."""

    __slots__ = ("g", "t", "buf", "state", "ticket", "sent", "pending", "bad", "t_eod",
                 "quit_sent", "done", "tls", "t_last", "pipelining", "chunking", "step", "has_tls")

    def __init__(self, g: Shared, ticket: int, done: asyncio.Future) -> None:
        self.g, self.ticket, self.done = g, ticket, done
        self.buf = b""
        self.state = S_GREET
        self.sent = 0
        self.pending = 0
        self.bad = None
        self.t_eod = 0.0
        self.quit_sent = self.tls = False
        self.pipelining = self.chunking = self.has_tls = False
        self.step = 0
        self.t_last = _mono()

    def connection_made(self, transport) -> None:
        self.t = transport
        self.g.live.add(self)

    def connection_lost(self, exc) -> None:
        if self.state not in (S_QUIT, S_DONE):
            self._count_failure("disconnect")
        self.state = S_DONE
        self.g.live.discard(self)
        if not self.done.done():
            self.done.set_result(None)

    def abort(self, why: str) -> None:
        if self.state != S_DONE:
            self._count_failure(why)
            self.state = S_DONE
            self.t.abort()

    def _count_failure(self, why: str) -> None:
        # A message in flight that never got its reply is an error; an idle connection's end is not.
        if self.ticket >= 0 and self.state not in (S_QUIT, S_DONE):
            self.g.error(why)
            self.ticket = -1

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        self.t_last = now = _mono()
        pos = rstart = 0  # rstart: where the reply being read began (multi-line replies)
        while True:
            i = buf.find(b"\n", pos)
            if i < 0:
                break
            if i - pos > 3 and buf[pos + 3] == 45:  # "250-..." continuation line
                pos = i + 1
                continue
            code = buf[pos:pos + 3]
            if self.state == S_EHLO:
                block = buf[rstart:i].upper()
                self.pipelining = b"PIPELINING" in block
                self.chunking = b"CHUNKING" in block
                self.has_tls = b"STARTTLS" in block
            pos = rstart = i + 1
            self._reply(code, now)
            if self.state == S_DONE or self.buf is None:
                return  # closed, or the TLS handshake owns the connection now
        self.buf = buf[rstart:] if rstart < len(buf) else b""

    # -- the state machine: one reply at a time ----------------------------------------

    def _reply(self, code: bytes, now: float) -> None:
        st = self.state
        g = self.g
        if st == S_BODY:
            if code[0] == 50:
                if self.ticket >= g.warmup:
                    g.ok += 1
                    g.latencies.append(now - self.t_eod)
                    g.t_end = now
                else:
                    g.warm_ok += 1
            else:
                g.error(code.decode("ascii", "replace"))
            self.ticket = -1
            self._next()
        elif st == S_TXN:
            self.pending -= 1
            if code[0] not in (50, 51) and self.bad is None:
                self.bad = code
            if self.pipelining:
                if self.pending:
                    return
                if g.bdat and self.chunking:  # the last reply is the BDAT's: end of data
                    if self.bad is None:
                        self.state = S_BODY
                        self._reply(code, now)
                    else:
                        self._fail_txn()
                elif code == b"354":  # some RCPTs may have failed; the message still goes
                    self._send_body()
                else:
                    self._fail_txn()
                return
            # one command at a time
            if self.bad is not None:
                self._fail_txn()
            elif self.pending or (g.bdat and self.chunking):
                self._send_step()
            elif code == b"354":
                self._send_body()
            else:
                self._fail_txn()
        elif st == S_RSET:
            self._next()
        elif st == S_GREET:
            if code[0] != 50:
                self._fatal(code)
                return
            self.state = S_EHLO
            self.t.write(g.ehlo)
        elif st == S_EHLO:
            if code[0] != 50:
                self.state = S_HELO
                self.t.write(g.helo)
                return
            if self.tls and g.resume:
                # the tickets come after the handshake, so they are in by the EHLO reply
                g.ssl_ctx.keep(self.t.get_extra_info("ssl_object"))
            if g.starttls and not self.tls:
                if not self.has_tls:
                    self._fatal(b"no-starttls")
                    return
                self.state = S_TLS
                self.t.write(b"STARTTLS\r\n")
                return
            self._start_txn()
        elif st == S_HELO:
            if code[0] != 50:
                self._fatal(code)
                return
            self._start_txn()
        elif st == S_TLS:
            if code != b"220":
                self._fatal(code)
                return
            self.buf = None  # marks "stop reading this buffer": the handshake takes over
            self.t.pause_reading()
            asyncio.ensure_future(self._starttls())
        elif st == S_QUIT:
            self.state = S_DONE
            self.t.close()

    async def _starttls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.t = await loop.start_tls(self.t, self, self.g.ssl_ctx, server_hostname=None)
        except Exception:
            self.abort("tls")
            return
        self.buf, self.tls = b"", True
        obj = self.t.get_extra_info("ssl_object")
        if obj is not None and obj.session_reused:
            self.g.tls_resumed += 1
        else:
            self.g.tls_full += 1
        self.state = S_EHLO
        self.t.write(self.g.ehlo)

    def _fatal(self, code: bytes) -> None:
        """The session cannot go on: count the message it held, say QUIT, end."""
        if self.ticket >= 0:
            self.g.error(code.decode("ascii", "replace"))
            self.ticket = -1
        self._quit()

    def _fail_txn(self) -> None:
        self.g.error((self.bad or b"???").decode("ascii", "replace"))
        self.ticket = -1
        if self.quit_sent:
            self.state = S_QUIT
            return
        self.state = S_RSET
        self.t.write(b"RSET\r\n")

    def _start_txn(self) -> None:
        g = self.g
        if self.ticket < 0:
            if self.sent >= g.per_connection:
                self._quit()
                return
            t = g.request(self._got_ticket)
            if t is None:
                self.state = S_PARK  # until the ticket is due (open loop); no reply expected
                return
            if t < 0:
                self._quit()
                return
            self.ticket = t
        self.sent += 1
        self.bad = None
        self.state = S_TXN
        self.t_last = _mono()
        if not self.pipelining:
            self.step = 0
            self.pending = len(g.cmds) + (0 if g.bdat and self.chunking else 1)
            self._send_step()
            return
        if g.bdat and self.chunking:
            self.pending = len(g.cmds) + 1
            data = g.txn_bdat_head + g.bdats[self.ticket % len(g.bdats)]
            self.t_eod = _mono()
            self.t.write(data)
        else:
            self.pending = len(g.cmds) + 1
            self.t.write(g.txn_data)

    def _got_ticket(self, t: int) -> None:
        if self.state == S_DONE:
            return
        if t < 0:
            self._quit()
            return
        self.ticket = t
        self._start_txn()

    def _send_step(self) -> None:
        """Without PIPELINING: MAIL, each RCPT, then DATA (or the BDAT chunk), one at a time."""
        g = self.g
        k = self.step
        self.step = k + 1
        if k < len(g.cmds):
            self.t.write(g.cmds[k])
        elif g.bdat and self.chunking:
            self.state = S_BODY
            self.t_eod = _mono()
            self.t.write(g.bdats[self.ticket % len(g.bdats)])
        else:
            self.t.write(b"DATA\r\n")

    def _send_body(self) -> None:
        g = self.g
        body = g.bodies[self.ticket % len(g.bodies)]
        self.state = S_BODY
        self.t_eod = _mono()
        self.t.write(body)

    def _next(self) -> None:
        if self.quit_sent:
            self.state = S_QUIT
            return
        self._start_txn()

    def _quit(self) -> None:
        # QUIT, then close without waiting for the 221, as Postfix's client does
        # (smtp_skip_quit_response). QUIT is not pipelined behind the last message: a server
        # that holds its replies while it waits for the client to close after QUIT (Exim 4.96
        # waits up to 200 ms) would otherwise hold that message's 250 too.
        self.state = S_QUIT
        if not self.quit_sent:
            self.quit_sent = True
            self.t.write(b"QUIT\r\n")
        self.state = S_DONE
        self.t.close()
