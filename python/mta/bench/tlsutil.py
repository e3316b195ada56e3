"""TLS for the bench tools: a throwaway self-signed certificate and the two contexts.

The certificate lives in a temporary directory for the life of the process; it is made
with the `cryptography` package when installed, else with the `openssl` CLI. The client
never verifies: it measures servers, it does not trust them.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
import shutil
import ssl
import subprocess
import tempfile

_made: tuple[str, str] | None = None


def _with_cryptography(cert: str, key: str, name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _dt.datetime.now(_dt.timezone.utc)
    c = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(k.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(k, hashes.SHA256())
    )
    with open(key, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    with open(cert, "wb") as f:
        f.write(c.public_bytes(serialization.Encoding.PEM))


def _with_openssl(cert: str, key: str, name: str) -> None:
    exe = shutil.which("openssl")
    if not exe:
        raise RuntimeError("a TLS certificate is needed: install the `cryptography` package or the openssl CLI")
    subprocess.run(
        [exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={name}", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )


def throwaway_certificate(name: str = "sink.bench.test") -> tuple[str, str]:
    """(cert path, key path) of a fresh self-signed certificate, made once per process."""
    global _made
    if _made is None:
        d = tempfile.mkdtemp(prefix="mta-bench-tls-")
        atexit.register(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        try:
            _with_cryptography(cert, key, name)
        except ImportError:
            _with_openssl(cert, key, name)
        _made = (cert, key)
    return _made


def server_context(cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    if not cert:
        cert, key = throwaway_certificate()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
