"""Outbound TLS: a client context per kind of verification, made once, and the last session of
each destination, offered on its next connection so reopening a pooled connection resumes.
Invariant: a session is offered only to the name and the context it was made with."""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict

from mta._native import TlsClientConfig

# Destinations whose last session is kept: a session is a few hundred bytes, so this bounds
# the cache near a megabyte however many destinations a relay talks to.
MAX_SESSIONS = 4096


class ResumingContext(ssl.SSLContext):
    """A client context that offers the session kept for a connection's name.
    `loop.start_tls` takes no session, but the event loop (uvloop and asyncio alike) makes
    each connection's SSLObject with `wrap_bio(..., server_hostname=...)`: this is where the
    session goes in. The name is the one the connection was opened for (SNI, or the peer's
    IP address, which OpenSSL sends no SNI for). Sessions are kept by name, not by address:
    the hosts behind one MX name that do not share their ticket keys refuse each other's
    session and the handshake is simply a full one."""

    def __init__(self, protocol=ssl.PROTOCOL_TLS_CLIENT):
        self.sessions: OrderedDict = OrderedDict()  # name -> (ssl.SSLSession, when it expires: time.time())

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        if session is None:
            kept = self.sessions.get(server_hostname)
            if kept is not None:
                if kept[1] > time.time():
                    session = kept[0]
                else:
                    del self.sessions[server_hostname]
        return super().wrap_bio(incoming, outgoing, server_side=server_side,
                                server_hostname=server_hostname, session=session)

    def keep(self, sslobj: ssl.SSLObject | None) -> None:
        """Remember the session `sslobj` ended up with, under the name it was made for (None:
        opened without one, as the load generator's connections), once the peer has sent its
        ticket (TLS 1.3 sends it after the handshake: call this after the first reply read over TLS)."""
        s = sslobj.session if sslobj is not None else None
        if s is None or not (s.has_ticket or (s.id and sslobj.version() != "TLSv1.3")):
            return  # nothing resumable (no ticket yet, or the server issues none)
        sessions = self.sessions
        name = sslobj.server_hostname
        sessions[name] = (s, s.time + s.timeout)
        sessions.move_to_end(name)
        while len(sessions) > MAX_SESSIONS:
            sessions.popitem(last=False)


def _resuming(verify: bool, ca_file: str | None) -> ResumingContext:
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.options |= ssl.OP_NO_COMPRESSION
    if verify:  # what ssl.create_default_context() makes, as our own class
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


ClientContext = ResumingContext | TlsClientConfig


class ClientTls:
    """The delivery's client contexts and their kept sessions, and how many handshakes
    were full or resumed (for /metrics). One per SmtpDelivery."""

    def __init__(self) -> None:
        self._contexts: dict[tuple, ClientContext] = {}
        self.full = 0
        self.resumed = 0

    def context(self, verify: bool, ca_file: str | None, engine: str = "openssl") -> ClientContext:
        """The context for verified (the chain and the name, against `ca_file` or the system
        store: always OpenSSL, so the checks are exactly Python's ssl's) or opportunistic (no
        verification: `engine`'s, rustls or OpenSSL) TLS; loading the trust store takes
        milliseconds, so it is done once per kind. Raises ssl.SSLError/OSError for a bad ca_file."""
        key = (True, ca_file) if verify else (False, engine)
        ctx = self._contexts.get(key)
        if ctx is None:
            if not verify and engine == "rustls":
                ctx = TlsClientConfig(False)  # keeps its sessions per name itself
            else:
                ctx = _resuming(verify, ca_file)
            self._contexts[key] = ctx
        return ctx

    def established(self, ctx: ClientContext, sslobj: ssl.SSLObject | None) -> None:
        """A handshake completed and a reply was read over it: count it and keep its session
        for the next connection to the same name (rustls keeps its own)."""
        if sslobj is None:
            return
        if sslobj.session_reused:
            self.resumed += 1
        else:
            self.full += 1
        if isinstance(ctx, ResumingContext):
            ctx.keep(sslobj)

    def forget(self) -> None:
        """Drop every context and kept session (the trust store or its files changed)."""
        self._contexts.clear()

    def series(self) -> list[list]:
        return [["mta_tls_handshakes", {"direction": "out", "resumed": "no"}, self.full],
                ["mta_tls_handshakes", {"direction": "out", "resumed": "yes"}, self.resumed]]
