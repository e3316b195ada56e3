"""STARTTLS for the server session (a mixin of `Session`): after "220 Ready to start TLS"
nothing more is read in plaintext, and whatever the client sent behind STARTTLS is dropped with
the parser that held it (CVE-2011-0411); after the handshake the session starts over, FRESH."""

from __future__ import annotations

import asyncio
import time

from mta import log as fastlog
from mta.smtp.counts import TLS_FAILED, TLS_FULL, TLS_RESUMED
from mta.smtp.replies import R_NOT_IMPL, R_TLS_ALREADY, R_TLS_GO
from mta.smtp.state import CLOSED, FRESH
from mta.smtp import tlstransport
from mta.smtp.tls import HANDSHAKE_TIMEOUT, TlsInfo


class StartTlsMixin:
    """Uses Session's slots and methods (`tls`, `tls_mode`, `tls_info`, `parser`, `_reset`, ...)."""

    __slots__ = ()

    # STARTTLS (RFC 3207): after "220 Ready to start TLS" nothing more is read in
    # plaintext; commands already received behind STARTTLS are dropped with the parser
    # that held them (CVE-2011-0411), and after the handshake the session is FRESH again
    # (EHLO, HELO and any MAIL forgotten). On an implicit-TLS listener (RFC 8314) the
    # session is made after the handshake, so the greeting waits for it.
    def _starttls(self, _arg) -> None:
        # STARTTLS with arguments is refused by the parser (501 5.5.4).
        if self.tls_info is not None or self.tls_mode == "implicit":
            self._reply(R_TLS_ALREADY)
            return
        if self.tls_mode != "starttls":
            self._reply(R_NOT_IMPL)
            return
        # Forget everything the client said in plaintext (RFC 3207 4.2) and
        # everything it sent behind STARTTLS: the queued events and the
        # parser with its buffered bytes go; a fresh parser starts over TLS.
        self._queue.clear()
        self.parser = self._new_parser()
        self._reset()
        self.helo, self.esmtp = "", False
        self.state = FRESH
        self._out.append(R_TLS_GO)
        self._flush()
        self._tls_busy = True
        # Reading is active here (we are inside data_received), so this takes
        # effect at once: no more plaintext reaches data_received, and the
        # bytes the kernel still holds go to the TLS layer.
        self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        self._tls_task = loop.create_task(self._handshake(loop))

    async def _handshake(self, loop) -> None:
        plain = self.transport
        server = self.tls.server  # rustls (tls.engine), else OpenSSL's context
        try:
            if server is not None:
                tls = await tlstransport.start_tls(loop, plain, self, server.accept(), HANDSHAKE_TIMEOUT)
            else:
                tls = await loop.start_tls(
                    plain, self, self.tls.current, server_side=True,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                )
        except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - any failure closes this session only
            reason = str(e) or type(e).__name__
            fastlog.info(f"STARTTLS handshake failed from {self.rname or 'unknown'}[{self.peer_ip}]: {reason}")
            self.errors += 1
            self.counts[TLS_FAILED] += 1
            self._closing = True
            plain.close()
            self.connection_lost(e)
            return
        if tls is None or self.state is CLOSED:
            return
        self.transport = tls
        self.tls_info = TlsInfo.of(tls)
        sslobj = tls.get_extra_info("ssl_object")
        resumed = sslobj is not None and sslobj.session_reused
        self.counts[TLS_RESUMED if resumed else TLS_FULL] += 1
        self._auth_setup()  # the new parser; any earlier login is forgotten
        conn = self.conn
        conn.tls, conn.helo, conn.auth_user = self.tls_info, "", None
        self._tls_busy = False
        self._last_active = time.monotonic()
        how = " resumed" if resumed else ""
        fastlog.info(f"STARTTLS established from {self.rname or 'unknown'}[{self.peer_ip}]: {self.tls_info}{how}")

