"""Server-side TLS: the SSLContext built from [tls] (session tickets by mta.smtp.tickets), its
reload on SIGHUP, and `mta tls selfsigned`. Invariant: a reload replaces the context only once a
whole new one was built from the files, so a bad file never takes TLS down."""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import os
import ssl
from typing import NamedTuple

from mta._native import TlsServerConfig
from mta.config.schema import TlsConfig
from mta.errors import MtaError
from mta.smtp import tickets
from mta.smtp.counts import TLS_FAILED, TLS_FULL, TLS_RESUMED

log = logging.getLogger("mta.tls")

HANDSHAKE_TIMEOUT = 30.0
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(MtaError):
    """The certificate or key cannot be used."""


class TlsInfo(NamedTuple):
    """What a session knows about its TLS layer (for Received, logs, AUTH)."""

    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"
    bits: int

    def __str__(self) -> str:
        return f"{self.version} {self.cipher}"

    @classmethod
    def of(cls, transport) -> TlsInfo | None:
        obj = transport.get_extra_info("ssl_object")
        if obj is None:
            return None
        name, _proto, bits = obj.cipher() or ("unknown", "", 0)
        return cls(obj.version() or "unknown", name, bits or 0)


def build_context(cfg: TlsConfig, keys: tickets.TicketKeys | None = None) -> ssl.SSLContext:
    """A server context from the files; raises TlsError naming the problem. Its session
    tickets are sealed with `keys` (None: the process's, mta.smtp.tickets.shared), unless
    tls.session_tickets is false: then it resumes no session."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[cfg.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    if cfg.ciphers:
        ctx.set_ciphers(cfg.ciphers)  # validated by the config already
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except FileNotFoundError as e:
        raise TlsError(f"tls: cannot read {e.filename}: {e.strerror}") from e
    except OSError as e:  # ssl.SSLError is an OSError
        what = getattr(e, "reason", None) or e.strerror or str(e)
        raise TlsError(f"tls: cannot load tls.cert {cfg.cert!r} with tls.key {cfg.key!r}: {what}") from e
    if cfg.session_tickets:
        # One ticket per handshake, not OpenSSL's two: an SMTP client keeps one session per
        # destination and gets a new ticket at each resumption; the second cost ~30 us of
        # server CPU per full handshake (benches/tls_tickets_cpu.py).
        ctx.num_tickets = 1
        tickets.install(ctx, keys if keys is not None else tickets.shared(cfg.ticket_rotation))
    else:
        tickets.disable(ctx)
    return ctx


def build_rustls(cfg: TlsConfig) -> TlsServerConfig | None:
    """The rustls server config for SMTP when tls.engine is "rustls" (else None); raises
    TlsError naming the problem. Its tickets are sealed with keys from the process's secret
    (mta.smtp.tickets.process_secret), so every worker opens every other's."""
    if cfg.engine != "rustls":
        return None
    try:
        with open(cfg.cert, "rb") as f:
            cert = f.read()
        with open(cfg.key, "rb") as f:
            key = f.read()
    except OSError as e:
        raise TlsError(f"tls: cannot read {e.filename}: {e.strerror}") from e
    try:
        return TlsServerConfig(cert, key, cfg.min_version, ticket_secret=tickets.process_secret(),
                               rotation=cfg.ticket_rotation, resumption=cfg.session_tickets)
    except ValueError as e:
        raise TlsError(f"tls: cannot load tls.cert {cfg.cert!r} with tls.key {cfg.key!r}: {e}") from e


class Built(NamedTuple):
    """A [tls] table's contexts: OpenSSL's (HTTPS always; SMTP with engine = "openssl") and,
    with engine = "rustls", the one SMTP uses."""

    ssl: ssl.SSLContext
    rustls: TlsServerConfig | None


def build_contexts(cfg: TlsConfig, keys: tickets.TicketKeys | None = None) -> Built:
    return Built(build_context(cfg, keys), build_rustls(cfg))


# Established sessions keep the connection they have, so a reload never touches them.
# STARTTLS hands `TlsContext.current` to loop.start_tls; each implicit-TLS listening socket
# is bound once to a context of its own (`implicit_front`, built at start-up), whose
# servername callback, run by OpenSSL for every ClientHello (with or without SNI), moves
# the new connection to `current`.
class TlsContext:
    """The current server context; `reload()` swaps it if the files are good."""

    def __init__(self, cfg: TlsConfig, keys: tickets.TicketKeys | None = None):
        self.cfg = cfg
        self.keys = keys  # None: the process's shared ticket keys (build_context)
        built = build_contexts(cfg, keys)
        self.current: ssl.SSLContext = built.ssl
        self.server: TlsServerConfig | None = built.rustls  # SMTP's, with engine = "rustls"

    def _switch(self, sslobj: ssl.SSLObject, _server_name: str | None, ctx: ssl.SSLContext) -> None:
        if ctx is not self.current:
            sslobj.context = self.current  # the reloaded certificate and key

    def use(self, cfg: TlsConfig, built: Built) -> None:
        """A reloaded [tls] table and the contexts made from it (build_contexts): new handshakes get
        them; OpenSSL's implicit-TLS listeners keep their front contexts and switch to it."""
        self.cfg = cfg
        self.current, self.server = built
        log.info("tls: reloaded certificate %s", cfg.cert)

    def implicit_front(self, counts: list[int] | None = None) -> ssl.SSLContext:
        """What one implicit-TLS listener is created with (never replaced). `counts`: the
        listener's (mta.smtp.counts.listener_counts): a failed handshake is logged and adds
        one to counts[TLS_FAILED] (no session exists yet to count it), a done one to
        counts[TLS_FULL] or counts[TLS_RESUMED]; None (HTTPS): failures are only logged.
        Its tickets are the ones every context gets: OpenSSL seals and opens them with
        this front context's key callback, whichever context the connection moves to."""
        ctx = build_context(self.cfg, self.keys)
        ctx.sni_callback = self._switch
        if counts is None:
            ctx.sslobject_class = _ImplicitSSLObject
            return ctx

        class Counted(_ImplicitSSLObject):
            def failed(self) -> None:
                counts[TLS_FAILED] += 1

            def done(self) -> None:
                counts[TLS_RESUMED if self.session_reused else TLS_FULL] += 1

        ctx.sslobject_class = Counted
        return ctx

    def reload(self) -> bool:
        try:
            self.current, self.server = build_contexts(self.cfg, self.keys)
        except TlsError as e:
            log.error("%s; keeping the certificate loaded before", e)
            return False
        log.info("tls: reloaded certificate %s", self.cfg.cert)
        return True


class _ImplicitSSLObject(ssl.SSLObject):
    """Logs a failed handshake on an implicit-TLS listener (the event loop
    drops those silently: no session exists yet to log it)."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            log.info("implicit TLS handshake failed: %s", e.reason or e)
            self.failed()
            raise
        self.done()

    def failed(self) -> None:
        """A handshake failed (counted by the listener's context)."""

    def done(self) -> None:
        """A handshake completed (counted by the listener's context, full or resumed)."""


# --- mta tls selfsigned -----------------------------------------------------------


def selfsigned(out_dir: str, hostname: str, days: int) -> tuple[str, str]:
    """Write key.pem (0600) and cert.pem into out_dir; return their paths.
    The certificate names hostname, localhost, 127.0.0.1 and ::1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = _dt.datetime.now(_dt.timezone.utc)
    dns = list(dict.fromkeys([hostname, "localhost"]))
    alt = [x509.DNSName(n) for n in dns] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(out_dir, exist_ok=True)
    key_path = os.path.join(out_dir, "key.pem")
    cert_path = os.path.join(out_dir, "cert.pem")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode otherwise
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
