"""mta.smtp.tlstransport (rustls through mta._native) against real peers on loopback: Python's
ssl (smtplib, asyncio streams) and `openssl s_client`, server and client side, on asyncio and
uvloop: STARTTLS, resumption, a handshake timeout, garbage, 1 MiB each way, close_notify."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
from pathlib import Path

import pytest
from mta import _native
from mta.smtp.tls import selfsigned
from mta.smtp.tlstransport import TlsError, implicit_tls, start_tls

LOOPS = ["asyncio", "uvloop"]
SECRET = b"s" * 32
MiB = 1 << 20


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    key, cert = selfsigned(str(tmp_path_factory.mktemp("tls")), "mx.test", 30)
    return cert, key


@pytest.fixture(scope="module")
def server_config(pems):
    cert, key = pems
    return _native.TlsServerConfig(Path(cert).read_bytes(), Path(key).read_bytes(), "TLSv1.2", SECRET, 3600.0)


def run(loop: str, coro, limit: float = 20.0):
    async def bounded():
        return await asyncio.wait_for(coro, limit)

    if loop == "uvloop":
        import uvloop

        return uvloop.run(bounded())
    return asyncio.run(bounded())


def py_client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Smtpish(asyncio.Protocol):
    """Enough SMTP for smtplib and s_client: EHLO, STARTTLS (through start_tls), NOOP, QUIT."""

    def __init__(self, config, seen: list):
        self.config, self.seen, self.buf, self.secure = config, seen, b"", False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"220 mx.test ESMTP\r\n")

    def data_received(self, data):
        self.buf += data
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.line(line.upper())

    def line(self, line: bytes):
        t = self.transport
        if line.startswith(b"EHLO"):
            t.write(b"250-mx.test\r\n250 STARTTLS\r\n" if not self.secure else b"250 mx.test\r\n")
        elif line == b"STARTTLS":
            t.write(b"220 go ahead\r\n")
            t.pause_reading()
            self.buf = b""  # what came behind STARTTLS in plaintext is dropped
            asyncio.get_running_loop().create_task(self.tls())
        elif line == b"QUIT":
            t.write(b"221 bye\r\n")
            t.close()
        else:
            t.write(b"250 ok\r\n")

    async def tls(self):
        try:
            self.transport = await start_tls(asyncio.get_running_loop(), self.transport, self,
                                             self.config.accept(), 5.0)
        except Exception as e:  # noqa: BLE001 - the test reads it
            self.seen.append(e)
            return
        self.secure = True
        conn = self.transport.get_extra_info("tls_connection")
        self.seen += ["tls", self.transport.get_extra_info("tls"), conn.resumed]

    def connection_lost(self, exc):
        self.seen.append(("lost", exc))


async def smtp_server(config, seen):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Smtpish(config, seen), "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


@pytest.mark.parametrize("loop", LOOPS)
def test_starttls_server_side_against_smtplib(loop, server_config):
    def client(port):
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
            s.ehlo("c.test")
            s.starttls(context=py_client_ctx())
            code, _ = s.ehlo("c.test")
            assert code == 250 and not s.has_extn("starttls")
            assert s.noop()[0] == 250
            return s.sock.version(), s.sock.cipher()

    async def main():
        seen = []
        srv, port = await smtp_server(server_config, seen)
        async with srv:
            version, cipher = await asyncio.to_thread(client, port)
            for _ in range(50):
                if any(isinstance(x, tuple) and x[0] == "lost" for x in seen):
                    break
                await asyncio.sleep(0.01)
        return version, cipher, seen

    version, cipher, seen = run(loop, main())
    assert version == "TLSv1.3" and cipher[0] == "TLS_AES_256_GCM_SHA384"
    info = seen[seen.index("tls") + 1]
    assert (info.version, info.cipher, info.bits) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
    assert seen[-1] == ("lost", None), seen  # once, after 221 and our close_notify


def test_openssl_s_client_resumes_a_session(server_config, tmp_path):
    assert shutil.which("openssl"), "openssl (s_client) is not installed: scripts/test installs it"
    sess = tmp_path / "sess.pem"

    async def s_client(port, *args):
        p = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp", "-ign_eof", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await p.communicate(b"NOOP\r\nQUIT\r\n")
        return out.decode(errors="replace")

    async def main():
        seen = []
        srv, port = await smtp_server(server_config, seen)
        async with srv:
            first = await s_client(port, "-sess_out", str(sess))
            second = await s_client(port, "-sess_in", str(sess))
        return first, second, seen

    first, second, seen = run("uvloop", main())
    assert "New, TLSv1.3" in first and "221 bye" in first, first
    assert "Reused, TLSv1.3" in second and "221 bye" in second, second
    assert [x for x in seen if isinstance(x, bool)] == [False, True]


class Echo(asyncio.Protocol):
    """Echoes, with flow control: reading pauses while its writes are paused."""

    def __init__(self, done: asyncio.Future | None = None):
        self.done = done
        self.events = []

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=64 * 1024)

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.events.append("pause")
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        if self.done is not None and not self.done.done():
            self.done.set_result(self.events)


async def send_and_read(reader, writer, payload: bytes) -> bytes:
    async def send():
        for i in range(0, len(payload), 64 * 1024):
            writer.write(payload[i:i + 64 * 1024])
            await writer.drain()

    task = asyncio.create_task(send())
    got = await reader.readexactly(len(payload))
    await task
    return got


@pytest.mark.parametrize("loop", LOOPS)
def test_implicit_tls_server_echoes_a_mebibyte_then_sees_close_notify(loop, server_config):
    async def main():
        done = asyncio.get_running_loop().create_future()
        echo = Echo(done)
        srv = await asyncio.get_running_loop().create_server(
            implicit_tls(lambda: echo, server_config.accept, 5.0), "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=py_client_ctx(),
                                                           server_hostname="mx.test")
            payload = bytes(range(256)) * (MiB // 256)
            got = await send_and_read(reader, writer, payload)
            writer.close()  # close_notify
            await writer.wait_closed()
            events = await done
        assert echo.transport.get_extra_info("peername")[0] == "127.0.0.1"
        assert echo.transport.get_extra_info("tls_connection").peer_closed
        return got == payload, events

    same, events = run(loop, main())
    assert same
    assert "eof" in events and events[-1] == ("lost", None)
    assert events.count(("lost", None)) == 1


async def py_echo_server(ssl_ctx):
    async def handle(reader, writer):
        obj = writer.get_extra_info("ssl_object")
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            handle.reused.append(obj.session_reused)
            writer.close()

    handle.reused = []
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_ctx)
    return srv, srv.sockets[0].getsockname()[1], handle.reused


class Collect(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.more = asyncio.Event()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data
        self.more.set()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def client_over(port: int, config, name: str, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    transport.pause_reading()
    app = Collect()
    tls = await start_tls(loop, transport, app, config.connect(name), timeout)
    app.transport = tls
    return tls, app


@pytest.mark.parametrize("loop", LOOPS)
def test_client_side_against_python_ssl_server_resumes_and_moves_a_mebibyte(loop, pems):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pems)

    async def main():
        srv, port, reused = await py_echo_server(ctx)
        config = _native.TlsClientConfig(False)
        out = []
        async with srv:
            for size in (10, MiB):
                tls, app = await client_over(port, config, "mx.test")
                payload = b"x" * size
                tls.write(payload)
                while len(app.data) < size:
                    app.more.clear()
                    await app.more.wait()
                out.append((bytes(app.data) == payload, tls.get_extra_info("ssl_object").session_reused,
                            tls.get_extra_info("tls").version))
                tls.close()
                await app.lost
            await asyncio.sleep(0.05)
        return out, reused

    out, reused = run(loop, main())
    assert out == [(True, False, "TLSv1.3"), (True, True, "TLSv1.3")]
    assert reused == [False, True]


@pytest.mark.parametrize("loop", LOOPS)
def test_verified_client_refuses_a_self_signed_certificate(loop, pems):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pems)

    ca = Path(pems[0]).read_bytes()

    async def main():
        srv, port, _ = await py_echo_server(ctx)
        async with srv:
            with pytest.raises(TlsError) as e:
                await client_over(port, _native.TlsClientConfig(True, ca), "other.test")
            assert e.value.kind == "certificate-host-mismatch"
            assert isinstance(e.value, OSError)
            tls, _ = await client_over(port, _native.TlsClientConfig(True, ca), "mx.test")
            tls.close()

    run(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_handshake_timeout(loop):
    async def main():
        async def silent(reader, writer):
            await reader.read()  # says nothing, closes when the client goes

        srv = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with srv:
            with pytest.raises(TimeoutError):
                await client_over(srv.sockets[0].getsockname()[1], _native.TlsClientConfig(False), "mx.test", 0.2)

    run(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_sending_garbage_gets_an_alert_and_no_app_protocol(loop, server_config):
    async def main():
        failures, made = [], []

        class App(asyncio.Protocol):
            def __init__(self):
                made.append(self)  # no app protocol is even made for a failed handshake

        srv = await asyncio.get_running_loop().create_server(
            implicit_tls(App, server_config.accept, 5.0, failures.append), "127.0.0.1", 0)
        async with srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
            writer.write(b"EHLO garbage.test\r\n" * 10)
            answer = await reader.read()
            writer.close()
        return answer, failures, made

    answer, failures, made = run(loop, main())
    assert answer[:1] == b"\x15", answer  # a TLS alert record
    assert len(failures) == 1 and isinstance(failures[0], TlsError) and not made


@pytest.mark.parametrize("loop", LOOPS)
def test_data_and_close_behind_the_finished_reach_the_app_in_order(loop, server_config):
    """The client's Finished, a line, close_notify and FIN in one segment: the app gets
    connection_made, the line, EOF and the loss, in that order, after the handshake."""

    async def main():
        events, done = [], asyncio.get_running_loop().create_future()

        class App(asyncio.Protocol):
            def connection_made(self, transport):
                events.append("made")

            def data_received(self, data):
                events.append(data)

            def eof_received(self):
                events.append("eof")

            def connection_lost(self, exc):
                events.append(("lost", exc))
                done.set_result(None)

        srv = await asyncio.get_running_loop().create_server(
            implicit_tls(App, server_config.accept, 5.0), "127.0.0.1", 0)
        async with srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = py_client_ctx().wrap_bio(inc, out, server_hostname="mx.test")
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    writer.write(out.read())
                    inc.write(await reader.read(65536))
            obj.write(b"EHLO c.test\r\n")
            try:
                obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            writer.write(out.read())  # Finished, the line and close_notify together
            writer.write_eof()
            await done
            writer.close()
        return events

    assert run(loop, main()) == ["made", b"EHLO c.test\r\n", "eof", ("lost", None)]
