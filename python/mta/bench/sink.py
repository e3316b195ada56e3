"""The sink's SMTP side: one Protocol per connection answering every pipelined command of
a read in one write, DATA and BDAT bodies cut out of the read buffer. No reply to end of
data goes out before the message is counted and checked (`SinkCounters`, per process)."""

from __future__ import annotations

import asyncio
import random
import time

from mta.bench.payload import unstuff, verify

S_CMD, S_DATA, S_BDAT, S_CLOSED = range(4)
_MAX_LINE = 65536

OK = b"250 2.0.0 Ok\r\n"


class SinkCounters:
    """What one worker saw; the worker copies these into shared memory periodically."""

    __slots__ = ("connections", "messages", "bytes", "integrity_errors", "unchecked",
                 "rejected_4xx", "rejected_5xx", "first_t", "last_t", "tls_sessions")

    def __init__(self) -> None:
        self.connections = self.messages = self.bytes = 0
        self.integrity_errors = self.unchecked = 0
        self.rejected_4xx = self.rejected_5xx = 0
        self.tls_sessions = 0  # connections that completed STARTTLS
        self.first_t = 0.0  # wall clock of the first connection
        self.last_t = 0.0  # wall clock of the last end of message


class SinkConfig:
    """Everything a connection needs, built once per worker."""

    def __init__(self, hostname: str, reply_delay_ms: float, fail_4xx: float, fail_5xx: float,
                 ssl_ctx, seed: int | None = None) -> None:
        self.greeting = f"220 {hostname} ESMTP mta bench sink\r\n".encode()
        exts = [hostname, "PIPELINING", "SIZE 1073741824", "8BITMIME", "SMTPUTF8",
                "ENHANCEDSTATUSCODES", "CHUNKING"]
        self.ehlo = "".join(f"250-{e}\r\n" for e in exts).encode()
        self.ehlo_tls = self.ehlo + b"250 STARTTLS\r\n" if ssl_ctx else None
        last = exts[-1]
        self.ehlo = self.ehlo[: -len(last) - 6] + f"250 {last}\r\n".encode()
        self.helo = f"250 {hostname}\r\n".encode()
        self.delay = reply_delay_ms / 1000.0
        self.fail_4xx, self.fail_5xx = fail_4xx, fail_4xx + fail_5xx
        self.ssl_ctx = ssl_ctx
        self.rand = random.Random(seed).random
        self.counters = SinkCounters()


class SinkProtocol(asyncio.Protocol):
    __slots__ = ("cfg", "c", "t", "buf", "state", "has_mail", "nrcpt", "scan", "chunks",
                 "left", "last", "paused", "tls")

    def __init__(self, cfg: SinkConfig) -> None:
        self.cfg, self.c = cfg, cfg.counters
        self.buf = b""
        self.state = S_CMD
        self.has_mail, self.nrcpt = False, 0
        self.scan = 0
        self.chunks: list = []
        self.left, self.last = 0, False
        self.paused, self.tls = False, False

    def connection_made(self, transport) -> None:
        self.t = transport
        c = self.c
        c.connections += 1
        if not c.first_t:
            c.first_t = time.time()
        transport.write(self.cfg.greeting)

    def connection_lost(self, exc) -> None:
        self.state = S_CLOSED

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.paused:
            self._process()

    # -- the read loop: every complete unit in the buffer, one write at the end ----------

    def _process(self) -> None:
        buf, pos, out = self.buf, 0, []
        while self.state != S_CLOSED and not self.paused:
            if self.state == S_DATA:
                # buf[pos] is the LF before the data, so ".\r\n" right after DATA is found too
                j = buf.find(b"\n.\r\n", max(pos, self.scan))
                if j < 0:
                    self.scan = max(pos, len(buf) - 3)
                    break
                msg = buf[pos + 1:j + 1]
                pos = j + 4
                self.state = S_CMD
                reply = self._message(msg if b"\n." not in msg and not msg.startswith(b".") else unstuff(msg))
                if reply is not None:
                    out.append(reply)
                continue
            if self.state == S_BDAT:
                take = min(self.left, len(buf) - pos)
                if take:
                    self.chunks.append(buf[pos:pos + take])
                    pos += take
                    self.left -= take
                if self.left:
                    break
                self.state = S_CMD
                if self.last:
                    msg = b"".join(self.chunks)
                    self.chunks = []
                    if self.nrcpt:
                        reply = self._message(msg)
                    else:
                        reply = b"554 5.5.1 Error: no valid recipients\r\n"
                    if reply is not None:
                        out.append(reply)
                else:
                    out.append(b"250 2.0.0 Ok: chunk\r\n")
                continue
            i = buf.find(b"\n", pos)
            if i < 0:
                if len(buf) - pos > _MAX_LINE:
                    out.append(b"500 5.5.2 Error: line too long\r\n")
                    self._flush(out)
                    self.t.close()
                    self.state = S_CLOSED
                    return
                break
            reply = self._command(buf, pos, i, out)
            pos = i + (0 if self.state == S_DATA else 1)
            if reply is not None:
                out.append(reply)
        self.buf = buf[pos:] if pos < len(buf) else b""
        if self.state == S_DATA:
            self.scan = max(0, self.scan - pos)
        self._flush(out)

    def _flush(self, out: list) -> None:
        if out and self.state != S_CLOSED:
            self.t.write(b"".join(out) if len(out) > 1 else out[0])

    def _command(self, buf: bytes, pos: int, i: int, out: list) -> bytes | None:
        verb = buf[pos:pos + 4].upper()
        if verb == b"MAIL":
            if self.has_mail:
                return b"503 5.5.1 Error: nested MAIL command\r\n"
            self.has_mail, self.nrcpt = True, 0
            return b"250 2.1.0 Ok\r\n"
        if verb == b"RCPT":
            if not self.has_mail:
                return b"503 5.5.1 Error: need MAIL command\r\n"
            self.nrcpt += 1
            return b"250 2.1.5 Ok\r\n"
        if verb == b"DATA":
            if not self.nrcpt:
                return b"554 5.5.1 Error: no valid recipients\r\n"
            self.state, self.scan = S_DATA, i
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"BDAT":
            parts = buf[pos:i].split()
            try:
                self.left = int(parts[1])
            except (IndexError, ValueError):
                return b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"
            self.last = len(parts) > 2 and parts[2].upper() == b"LAST"
            self.state = S_BDAT
            return None
        if verb == b"EHLO":
            self.has_mail, self.nrcpt = False, 0
            return self.cfg.ehlo_tls if self.cfg.ehlo_tls and not self.tls else self.cfg.ehlo
        if verb == b"HELO":
            self.has_mail, self.nrcpt = False, 0
            return self.cfg.helo
        if verb == b"RSET":
            self.has_mail, self.nrcpt = False, 0
            return OK
        if verb == b"NOOP":
            return OK
        if verb == b"QUIT":
            out.append(b"221 2.0.0 Bye\r\n")
            self.t.write(b"".join(out))
            out.clear()
            self.t.close()
            self.state = S_CLOSED
            return None
        if verb == b"STAR" and buf[pos:i].strip().upper() == b"STARTTLS":
            if self.tls or not self.cfg.ssl_ctx:
                return b"502 5.5.1 Error: command not implemented\r\n"
            out.append(b"220 2.0.0 Ready to start TLS\r\n")
            self.t.write(b"".join(out))
            out.clear()
            self.t.pause_reading()
            self.paused = True
            asyncio.ensure_future(self._starttls())
            return None
        if verb == b"VRFY":
            return b"252 2.5.2 Cannot VRFY user\r\n"
        return b"502 5.5.2 Error: command not recognized\r\n"

    async def _starttls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.t = await loop.start_tls(self.t, self, self.cfg.ssl_ctx, server_side=True)
        except (OSError, ConnectionError, asyncio.CancelledError, Exception):  # a failed handshake ends the session
            self.t.abort()
            self.state = S_CLOSED
            return
        # Anything pipelined after STARTTLS in clear text is discarded (RFC 3207 4.2).
        self.buf, self.tls, self.paused = b"", True, False
        self.c.tls_sessions += 1
        self.has_mail, self.nrcpt, self.state = False, 0, S_CMD

    def _message(self, msg: bytes) -> bytes | None:
        """Count and check one message; the reply, or None when it is sent after a delay."""
        cfg, c = self.cfg, self.c
        self.has_mail, self.nrcpt = False, 0
        ok = verify(msg)
        if ok is None:
            c.unchecked += 1
        elif not ok:
            c.integrity_errors += 1
        reply = b"250 2.0.0 Ok: queued\r\n"
        if cfg.fail_5xx:
            r = cfg.rand()
            if r < cfg.fail_4xx:
                c.rejected_4xx += 1
                reply = b"451 4.3.0 Error: injected failure\r\n"
            elif r < cfg.fail_5xx:
                c.rejected_5xx += 1
                reply = b"554 5.3.0 Error: injected failure\r\n"
        if reply[0] == 50:
            c.messages += 1
            c.bytes += len(msg)
        c.last_t = time.time()
        if not cfg.delay:
            return reply
        self.paused = True
        asyncio.get_running_loop().call_later(cfg.delay, self._release, reply)
        return None

    def _release(self, reply: bytes) -> None:
        if self.state == S_CLOSED:
            return
        self.t.write(reply)
        self.paused = False
        self._process()
