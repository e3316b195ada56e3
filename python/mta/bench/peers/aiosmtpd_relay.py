"""`python -m mta.bench.peers.aiosmtpd_relay`: aiosmtpd on uvloop whose handler relays each
message to the sink before it answers, over one kept sink connection per inbound session.
No queue: the client sees 250 only after the sink said 2xx, else the sink's refusal or a 451."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

import aiosmtpd
from aiosmtpd.smtp import SMTP

# Generous for the 1 MiB workloads; aiosmtpd holds a whole message in memory anyway.
DATA_SIZE_LIMIT = 64 << 20
# One message's whole exchange with the sink, opening the connection included.
SINK_TIMEOUT_S = 60.0
QUIT_TIMEOUT_S = 5.0


class ReplyError(ValueError):
    """The sink sent something that is not an SMTP reply."""


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """One reply line -> (code, is_last, text). RFC 5321 4.2: three digits (2-5, 0-5, 0-9),
    then " " on the last line or "-" on the others; the text may be empty."""
    line = line.rstrip(b"\r\n")
    if (len(line) < 3 or not 50 <= line[0] <= 53 or not 48 <= line[1] <= 53 or not 48 <= line[2] <= 57
            or line[3:4] not in (b"", b" ", b"-")):
        raise ReplyError(f"not an SMTP reply line: {line[:80]!r}")
    # The text goes back to our client through aiosmtpd, which writes ASCII only.
    text = line[4:].decode("ascii", "replace").replace("\ufffd", "?")
    return int(line[:3]), line[3:4] != b"-", text


def dot_stuff(data: bytes) -> bytes:
    """The message as DATA sends it (RFC 5321 4.5.2): a "." doubled at each line start, the
    last line ended by CRLF, then the end-of-data line."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def client_reply(code: int, lines: list[str]) -> str:
    """What our client is told when the sink refused with `code`: its 4xx/5xx as it was, a
    451 4.4.1 for anything else (a 421 closes the sink connection, not the client's)."""
    if 400 <= code <= 599 and code != 421:
        lines = lines or [""]
        return "\r\n".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{t}" for i, t in enumerate(lines)).rstrip()
    said = " ".join(lines)[:200]
    return f"451 4.4.1 relay to the sink failed: {code} {said}".rstrip()


class _Broken(Exception):
    """The sink connection failed or refused the session: the reply for our client, and
    `retry` when nothing of the message reached the sink (a fresh connection may do)."""

    def __init__(self, reply: str, retry: bool) -> None:
        super().__init__(reply)
        self.retry = retry


class SinkConnection:
    """The sink connection of one inbound session: opened at its first message, kept for the
    next ones, reopened when broken. The session is serial, so one transaction at a time."""

    def __init__(self, host: str, port: int, hostname: str, tls: ssl.SSLContext | None) -> None:
        self.host, self.port, self.hostname, self.tls = host, port, hostname, tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.exts: set[str] = set()
        self.busy = False

    async def _reply(self) -> tuple[int, list[str]]:
        code, lines = 0, []
        while True:
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise ConnectionResetError("the sink closed the connection")
            c, last, text = parse_reply_line(raw)
            if code and c != code:
                raise ReplyError(f"reply code changed within a reply: {code} then {c}")
            code = c
            lines.append(text)
            if last:
                return code, lines

    async def _command(self, line: bytes) -> tuple[int, list[str]]:
        self.writer.write(line)
        return await self._reply()

    async def _hello(self) -> set[str]:
        code, lines = await self._command(b"EHLO " + self.hostname.encode() + b"\r\n")
        if code == 250:
            return {t.split(" ", 1)[0].upper() for t in lines[1:]}
        code, lines = await self._command(b"HELO " + self.hostname.encode() + b"\r\n")
        if code != 250:
            raise _Broken(client_reply(code, lines), retry=False)
        return set()

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        code, lines = await self._reply()
        if code != 220:
            raise _Broken(client_reply(code, lines), retry=False)
        exts = await self._hello()
        tls = False
        if "STARTTLS" in exts and self.tls is not None:
            code, _ = await self._command(b"STARTTLS\r\n")
            if code == 220:  # else (454) go on in clear: TLS outbound is opportunistic
                await self.writer.start_tls(self.tls)
                exts, tls = await self._hello(), True
        self.exts = exts
        # One line per connection: tests and readers of the log see whether TLS was used.
        print(f"sink connection {self.host}:{self.port} tls={'yes' if tls else 'no'}", flush=True)

    def _drop(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def send(self, sender: str, rcpts: list[str], data: bytes, body8: bool) -> str:
        """Relay one message; the reply for our client ("250 ..." only after the sink's 2xx)."""
        self.busy = True
        try:
            for attempt in (1, 2):
                reused = self.writer is not None
                try:
                    async with asyncio.timeout(SINK_TIMEOUT_S):
                        if self.writer is None:
                            await self._open()
                        return await self._transaction(sender, rcpts, data, body8)
                except _Broken as e:
                    self._drop()
                    # A kept connection the sink closed while idle: once more on a fresh one.
                    if not (e.retry and reused and attempt == 1):
                        return str(e)
                except (OSError, EOFError, ValueError, TimeoutError) as e:  # ValueError: a bad reply
                    self._drop()
                    return f"451 4.4.1 relay to the sink failed: {type(e).__name__} {e}".rstrip()
            raise AssertionError("unreachable")
        except BaseException:  # our client went away mid-transaction: the sink state is unknown
            self._drop()
            raise
        finally:
            self.busy = False

    async def _transaction(self, sender: str, rcpts: list[str], data: bytes, body8: bool) -> str:
        w = self.writer
        mail = b"MAIL FROM:<" + sender.encode() + b">"
        if body8 and "8BITMIME" in self.exts:
            mail += b" BODY=8BITMIME"
        cmds = [mail + b"\r\n"] + [b"RCPT TO:<" + r.encode() + b">\r\n" for r in rcpts] + [b"DATA\r\n"]
        replies = []
        try:
            if "PIPELINING" in self.exts:  # RFC 2920: one write, the replies in order
                w.write(b"".join(cmds))
                for _ in cmds:
                    replies.append(await self._reply())
            else:
                for c in cmds:
                    replies.append(await self._command(c))
                    if replies[-1][0] >= 400:
                        break
        except (OSError, EOFError) as e:
            raise _Broken(f"451 4.4.1 relay to the sink failed: {type(e).__name__} {e}".rstrip(), retry=True) from e
        n = len(cmds) - 1
        refused = next((r for r in replies[:n] if r[0] >= 300), None)
        data_ok = len(replies) > n and replies[n][0] == 354
        if refused is None and data_ok:
            w.write(dot_stuff(data))
            code, lines = await self._reply()
            if code == 421:
                self._drop()
            return "250 2.0.0 Ok: relayed" if 200 <= code < 300 else client_reply(code, lines)
        if data_ok:  # a recipient refused but DATA open: close, or the others get it
            self._drop()
        else:
            try:  # the refusal is the client's reply even if RSET fails
                code, _ = await self._command(b"RSET\r\n")
            except (OSError, EOFError, ValueError):
                code = 0
            if code != 250:
                self._drop()
        return client_reply(*(refused or replies[-1]))

    async def close(self) -> None:
        """QUIT, when the connection is open and idle (a busy one is dropped by `send`)."""
        if self.writer is None or self.busy:
            return
        w = self.writer
        try:
            async with asyncio.timeout(QUIT_TIMEOUT_S):
                await self._command(b"QUIT\r\n")
        except (OSError, EOFError, ValueError, TimeoutError):
            pass
        finally:
            self.reader = self.writer = None
            w.close()


class RelayHandler:
    """aiosmtpd's handler: DATA is answered with what the sink said."""

    def __init__(self, conn: SinkConnection) -> None:
        self.conn = conn

    async def handle_DATA(self, server, session, envelope) -> str:
        body8 = any(o.upper() == "BODY=8BITMIME" for o in envelope.mail_options)
        return await self.conn.send(envelope.mail_from, envelope.rcpt_tos, envelope.original_content, body8)


_closing: set[asyncio.Task] = set()  # the QUIT tasks: the loop keeps only weak references


class RelaySMTP(SMTP):
    """aiosmtpd's session, closing its sink connection when the client goes."""

    def connection_lost(self, error) -> None:
        super().connection_lost(error)
        task = asyncio.ensure_future(self.event_handler.conn.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    inbound = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    inbound.load_cert_chain(args.cert, args.key)
    outbound = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    outbound.check_hostname = False  # a bench sink's throwaway certificate: never verified
    outbound.verify_mode = ssl.CERT_NONE
    rhost, rport = _hostport(args.relay)

    def session() -> RelaySMTP:
        conn = SinkConnection(rhost, rport, args.hostname, outbound)
        return RelaySMTP(RelayHandler(conn), hostname=args.hostname, tls_context=inbound,
                         require_starttls=False, data_size_limit=DATA_SIZE_LIMIT, loop=loop)

    host, port = _hostport(args.listen)
    server = await loop.create_server(session, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"aiosmtpd {aiosmtpd.__version__} on uvloop: {args.listen} relaying to {args.relay}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mta.bench.peers.aiosmtpd_relay", description=__doc__)
    p.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    p.add_argument("--relay", required=True, help="HOST:PORT of the sink")
    p.add_argument("--cert", required=True, help="PEM certificate offered with STARTTLS")
    p.add_argument("--key", required=True, help="its PEM key")
    p.add_argument("--hostname", default="relay.bench.test", help="the name in the greeting and EHLO")
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
