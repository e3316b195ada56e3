"""Helpers for the outbound SMTP client's tests: aiosmtpd and scripted peers on loopback,
a tap between client and peer, `mta run` as a peer, throwaway certificates, and the client
and message builders. Every wait is bounded (DEADLINE per test coroutine)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from aiosmtpd.controller import Controller

from mta.delivery import OutMessage, OutRcpt, Target
from mta.delivery.smtp.client import SmtpDelivery, SmtpOptions

DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro, loop: str = "asyncio"):
    async def bounded():
        return await asyncio.wait_for(coro, DEADLINE)

    if loop == "uvloop":
        import uvloop

        return uvloop.run(bounded())
    return asyncio.run(bounded())


def client(default: float = 10.0, **timeouts) -> SmtpDelivery:
    """A client whose RFC 5321 timeouts are `default` seconds (or as named), not minutes."""
    d = SmtpDelivery()
    for name in ("greeting", "helo", "starttls", "auth", "rset", "mail", "rcpt", "data_init",
                 "data_block", "data_done"):
        setattr(d, f"{name}_timeout", timeouts.get(name, default))
    return d


def message(*rcpts: str, data: bytes = b"Subject: t\r\n\r\nhello\r\n", sender: str = "from@src.test",
            **kw) -> OutMessage:
    return OutMessage("Q1", sender, tuple(OutRcpt(r, index=i) for i, r in enumerate(rcpts)), data, **kw)


OPTS = SmtpOptions(helo="client.test", connect_timeout=5.0)


class Capture:
    """aiosmtpd handler that records each transaction; RCPT and DATA replies can be scripted."""

    def __init__(self, rcpt_replies: dict[str, str] | None = None, data_reply: str = "250 2.0.0 Ok",
                 data_delay: float = 0.0) -> None:
        self.rcpt_replies = rcpt_replies or {}
        self.data_reply = data_reply
        self.data_delay = data_delay
        self.envelopes: list[dict] = []
        self.peers: set = set()
        self.active = self.peak = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.peers.add(session.peer)
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address.split("@")[0])
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.data_delay:
                await asyncio.sleep(self.data_delay)
        finally:
            self.active -= 1
        self.envelopes.append(dict(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options), rcpt_options=list(envelope.rcpt_options),
            data=envelope.original_content, tls=session.ssl is not None, peer=session.peer,
        ))
        return self.data_reply


@contextmanager
def aiosmtpd_peer(handler, **kw):
    port = free_port()
    c = Controller(handler, hostname="127.0.0.1", port=port, **kw)
    c.start()
    try:
        yield port
    finally:
        c.stop()


def target(port: int, host: str = "mx.test") -> Target:
    return Target(host, "127.0.0.1", port)


class Scripted(asyncio.Protocol):
    """A minimal ESMTP server that records every chunk it receives. With
    pipelining it answers nothing before the DATA command (a lock-step client
    would hang); without, it answers each line as it comes."""

    def __init__(self, log: list, pipelining: bool, drop_at_rset: bool = False,
                 broken_tls: bool = False) -> None:
        self.log, self.pipelining, self.drop_at_rset = log, pipelining, drop_at_rset
        self.broken_tls = broken_tls  # offer STARTTLS, say 220, then hang up mid-handshake
        self.buf, self.pending, self.in_data = b"", [], False

    def connection_made(self, t) -> None:
        self.t = t
        t.write(b"220 scripted ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.log.append(data)
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buf = self.buf[end + 5:]
                self.in_data = False
                self.t.write(b"250 2.0.0 queued\r\n")
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            verb = line[:4].upper()
            if verb == b"RSET" and self.drop_at_rset:
                self.t.close()  # as if the connection had died while idle
                return
            if verb == b"EHLO":
                ext = b"250-PIPELINING\r\n" if self.pipelining else b""
                ext += b"250-STARTTLS\r\n" if self.broken_tls else b""
                self.t.write(b"250-scripted\r\n" + ext + b"250 8BITMIME\r\n")
            elif verb == b"STAR" and self.broken_tls:
                self.t.write(b"220 2.0.0 go ahead\r\n")
                self.t.close()
                return
            elif verb in (b"MAIL", b"RCPT", b"RSET"):
                self.pending.append(b"250 2.1.0 Ok\r\n")
            elif verb == b"DATA":
                self.pending.append(b"354 go on\r\n")
                self.in_data = True
            elif verb == b"QUIT":
                self.t.write(b"221 bye\r\n")
                self.t.close()
                return
            else:
                self.pending.append(b"502 5.5.1 what\r\n")
            if self.pending and (not self.pipelining or verb == b"DATA"):
                self.t.write(b"".join(self.pending))
                self.pending.clear()


async def scripted_server(log: list, pipelining: bool, drop_at_rset: bool = False, broken_tls: bool = False):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Scripted(log, pipelining, drop_at_rset, broken_tls),
                                   "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


class Tap:
    """A loopback TCP relay in front of a peer: records what the client sent on each
    connection and how many connections were open at once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.streams: list[bytearray] = []
        self.active = self.peak = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, cr, cw) -> None:
        rec = bytearray()
        self.streams.append(rec)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)

            async def pump(r, w, record):
                try:
                    while data := await r.read(65536):
                        if record is not None:
                            record.extend(data)
                        w.write(data)
                        await w.drain()
                finally:
                    w.close()

            await asyncio.gather(pump(cr, uw, rec), pump(ur, cw, None), return_exceptions=True)
        finally:
            self.active -= 1

    def close(self) -> None:
        self.server.close()


def wait_greeting(port: int, proc: subprocess.Popen, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Until the server `proc` started greets with 220 on host:port; RuntimeError if it exits
    first or does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no greeting on port {port} within {timeout:g} s")


@contextmanager
def mta_process(*args: str):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mta", *args, "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_greeting(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def make_cert(directory: Path, name: str = "mx.test") -> tuple[str, str]:
    """A self-signed certificate for `name` (also usable as its own trust anchor)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


