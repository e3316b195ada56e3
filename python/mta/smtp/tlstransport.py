"""An asyncio Transport that runs TLS with mta._native's TlsConnection (rustls) over a plain
transport (uvloop's or asyncio's), for STARTTLS both ways and implicit TLS. Invariant: the app
protocol sees only plaintext that came through TLS, and only after the handshake completed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mta._native import TlsConnection, TlsError
from mta.smtp.tls import TlsInfo

__all__ = ["TlsError", "TlsTransport", "implicit_tls", "start_tls"]


class TlsObjectView:
    """What `get_extra_info("ssl_object")` gives: the part of ssl.SSLObject that mta reads
    (mta.smtp.tls.TlsInfo.of), so sessions need not know which engine runs."""

    def __init__(self, conn: TlsConnection):
        self.conn = conn

    def version(self) -> str | None:
        return self.conn.version

    def cipher(self) -> tuple[str, str, int] | None:
        c = self.conn
        return None if c.cipher is None else (c.cipher, c.version or "", c.bits or 0)

    @property
    def session_reused(self) -> bool:
        return self.conn.resumed


class _Plain(asyncio.Protocol):
    """Stands in as the plain transport's protocol; hands everything to the TlsTransport."""

    def __init__(self, tls: TlsTransport):
        self.tls = tls
        # The hot path: the event loop calls the TLS transport's method with no frame between.
        self.data_received = tls.ciphertext_received

    def eof_received(self) -> bool:
        return self.tls.plain_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tls.plain_lost(exc)

    def pause_writing(self) -> None:
        self.tls.plain_pause_writing(True)

    def resume_writing(self) -> None:
        self.tls.plain_pause_writing(False)


class TlsTransport(asyncio.Transport):
    """TLS over `plain` for `protocol`. Made by start_tls (or implicit_tls), which waits for
    the handshake; from then on it is the app's transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, plain: asyncio.Transport,
                 protocol: asyncio.BaseProtocol, conn: TlsConnection):
        super().__init__()
        self.loop = loop
        self.plain = plain
        self.protocol = protocol
        self.conn = conn
        self.handshake: asyncio.Future = loop.create_future()
        self.ready = False  # the handshake is done and start_tls has handed us to the app
        self.pending: list[bytes] = []  # plaintext that arrived with the handshake's end
        self.pending_eof = False
        self.pending_lost: tuple | None = None  # (exc,) for connection_lost
        self.closing = False
        self.lost = False
        self.error: Exception | None = None
        self.write_paused = False
        self.app_write_paused = False
        plain.set_protocol(_Plain(self))
        self.ciphertext_received(b"")  # a client's ClientHello; nothing for a server
        plain.resume_reading()

    # --- from the plain transport ---------------------------------------------------

    def ciphertext_received(self, data: bytes) -> None:
        if self.lost or self.error is not None:
            return
        try:
            plain, out = self.conn.feed(data)
        except TlsError as e:
            self.fail(e)
            return
        if out:
            self.plain.write(out)
        if not self.ready and not self.handshake.done() and not self.conn.handshaking:
            self.handshake.set_result(None)
        if plain:
            if self.ready and not self.pending:
                self.protocol.data_received(plain)
            else:
                self.pending.append(plain)
        if self.conn.peer_closed:
            self.peer_eof()

    def fail(self, e: Exception) -> None:
        """A TLS failure: the alert goes out, the connection closes, the app hears of it
        (the waiter of the handshake, or connection_lost)."""
        self.error = e
        self.closing = True
        try:
            self.plain.write(self.conn.close())
        finally:
            self.plain.close()
        if not self.handshake.done():
            self.handshake.set_exception(e)

    def peer_eof(self) -> None:
        if not self.ready:
            self.pending_eof = True
            return
        if self.pending:
            self.pending_eof = True
            return
        keep = self.protocol.eof_received()
        if not keep:
            self.close()

    def plain_eof(self) -> bool:
        """TCP FIN (with or without close_notify before it)."""
        if not self.ready:
            if not self.handshake.done():
                self.handshake.set_exception(ConnectionResetError("connection closed during the TLS handshake"))
                return False
            self.pending_eof = True  # the app decides, once it has the transport
            return True
        if self.conn.peer_closed:
            return False  # eof_received was called for the close_notify
        return bool(self.protocol.eof_received())

    def plain_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("connection lost during the TLS handshake"))
        elif self.ready:
            self.protocol.connection_lost(exc or self.error)
        else:  # done, and start_tls has not handed us over yet: the app hears it then
            self.pending_lost = (exc or self.error,)

    def plain_pause_writing(self, paused: bool) -> None:
        self.write_paused = paused
        if self.ready:
            self.app_pause_writing(paused)

    def app_pause_writing(self, paused: bool) -> None:
        if paused != self.app_write_paused:
            self.app_write_paused = paused
            (self.protocol.pause_writing if paused else self.protocol.resume_writing)()

    # --- handing over to the app -------------------------------------------------------

    async def wait_handshake(self, timeout: float | None) -> None:
        # A timer rather than asyncio.wait_for, which makes a task per handshake.
        timer = None if timeout is None else self.loop.call_later(timeout, self.timed_out)
        try:
            await self.handshake
        except BaseException:
            if not self.closing:
                self.closing = True
                self.plain.abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self.ready = True
        if self.write_paused:
            self.app_pause_writing(True)
        if self.pending or self.pending_eof or self.pending_lost:
            # After the caller has taken the transport (it resumes from start_tls first).
            self.loop.call_soon(self.deliver_pending)

    def timed_out(self) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(TimeoutError("TLS handshake timed out"))

    def deliver_pending(self) -> None:
        """What came with the end of the handshake, in order: data, EOF, the loss."""
        while self.pending:
            self.protocol.data_received(self.pending.pop(0))
        if self.pending_eof:
            self.pending_eof = False
            if self.pending_lost:
                self.protocol.eof_received()  # the connection is gone: nothing to keep open
            else:
                self.peer_eof()
        if self.pending_lost:
            (exc,) = self.pending_lost
            self.pending_lost = None
            self.protocol.connection_lost(exc)

    # --- asyncio.Transport ------------------------------------------------------------

    def write(self, data) -> None:
        if self.closing:
            return
        out = self.conn.send(bytes(data))
        if out:
            self.plain.write(out)

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """close_notify, then the plain transport closes once its buffer is out."""
        if self.closing:
            return
        self.closing = True
        if not self.lost:
            self.plain.write(self.conn.close())
            self.plain.close()

    def abort(self) -> None:
        self.closing = True
        self.plain.abort()

    def is_closing(self) -> bool:
        return self.closing or self.plain.is_closing()

    def pause_reading(self) -> None:
        self.plain.pause_reading()

    def resume_reading(self) -> None:
        self.plain.resume_reading()

    def is_reading(self) -> bool:
        return self.plain.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.plain.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.plain.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.plain.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def get_extra_info(self, name: str, default=None):
        if name == "tls":
            c = self.conn
            return None if c.handshaking else TlsInfo(c.version or "unknown", c.cipher or "unknown", c.bits or 0)
        if name == "ssl_object":
            return TlsObjectView(self.conn)
        if name == "tls_connection":
            return self.conn
        return self.plain.get_extra_info(name, default)


async def start_tls(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                    protocol: asyncio.BaseProtocol, conn: TlsConnection, timeout: float | None) -> TlsTransport:
    """TLS on `transport` (reading paused by the caller, nothing read after STARTTLS's reply
    kept) for `protocol`, as loop.start_tls: `conn` from TlsServerConfig.accept() or
    TlsClientConfig.connect(name). TimeoutError, the TlsError, or ConnectionResetError when
    the peer goes away; the transport is then closed. connection_made is not called."""
    tls = TlsTransport(loop, transport, protocol, conn)
    await tls.wait_handshake(timeout)
    return tls


def implicit_tls(factory: Callable[[], asyncio.Protocol], accept: Callable[[], TlsConnection],
                 timeout: float, on_failure: Callable[[Exception], None] | None = None,
                 on_done: Callable[[TlsConnection], None] | None = None) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for loop.create_server on an implicit-TLS port: each connection does
    the handshake (`accept()` makes its TlsConnection), then an app protocol from `factory()`
    gets connection_made with the TLS transport. A failed handshake closes the connection and
    calls `on_failure(exc)` (logging, counting); no app protocol is made for it. `on_done(conn)`:
    after each handshake that completed (counting full and resumed ones)."""

    class Implicit(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:
            loop = asyncio.get_running_loop()
            # No app protocol yet: it is made once the handshake has succeeded, so a scanner's
            # failed handshake costs no session.
            tls = TlsTransport(loop, transport, asyncio.Protocol(), accept())
            loop.create_task(self.handshake(tls, timeout))

        async def handshake(self, tls: TlsTransport, timeout: float) -> None:
            try:
                await tls.wait_handshake(timeout)
            except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - one connection only
                if on_failure is not None:
                    on_failure(e)
                return
            if on_done is not None:
                on_done(tls.conn)
            app = factory()
            tls.set_protocol(app)
            app.connection_made(tls)  # before what came with the handshake's end (call_soon)

    return Implicit
