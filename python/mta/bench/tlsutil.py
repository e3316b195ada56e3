"""TLS for the bench tools: a throwaway self-signed certificate (made as `mta tls
selfsigned` does) and the two contexts. The client never verifies: it measures
servers, it does not trust them."""

from __future__ import annotations

import atexit
import shutil
import ssl
import tempfile

from mta.smtp.tls import selfsigned

_made: tuple[str, str] | None = None


def throwaway_certificate(name: str = "sink.bench.test") -> tuple[str, str]:
    """(cert path, key path) of a fresh self-signed certificate, made once per process."""
    global _made
    if _made is None:
        d = tempfile.mkdtemp(prefix="mta-bench-tls-")
        atexit.register(shutil.rmtree, d, True)
        key, cert = selfsigned(d, name, days=2)
        _made = (cert, key)
    return _made


def server_context(cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    if not cert:
        cert, key = throwaway_certificate()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(cls: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
