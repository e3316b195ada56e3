"""mta._native's TLS engine (rustls) in memory against Python's ssl: names as ssl reports them,
tickets shared by configs with one secret and refused by others, the minimum version, and the
errors a caller sees (ValueError for a bad config, TlsError with its kind for a failure)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from mta import _native
from mta.smtp.tls import selfsigned


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    key, cert = selfsigned(str(tmp_path_factory.mktemp("tls")), "mx.test", 30)
    return Path(cert).read_bytes(), Path(key).read_bytes()


def client_ctx(max_version=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    return ctx


CLIENT = client_ctx()


def handshake(server: _native.TlsConnection, max_version=None, session=None) -> ssl.SSLObject:
    """An ssl client against `server` to the end (its ticket read); the client's SSLObject."""
    ctx = client_ctx(max_version) if max_version else CLIENT  # sessions belong to their context
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="mx.test", session=session)
    for _ in range(5):
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        _, back = server.feed(out.read())
        inc.write(back)
        if done:
            break
    with pytest.raises(ssl.SSLWantReadError):
        obj.read()  # takes the ticket
    obj.write(b"EHLO c.test\r\n")
    assert server.feed(out.read())[0] == b"EHLO c.test\r\n"
    inc.write(server.send(b"250 mx.test\r\n"))
    assert obj.read() == b"250 mx.test\r\n"
    return obj


def test_names_match_ssl_and_tickets_follow_the_secret(pems):
    a = _native.TlsServerConfig(*pems, "TLSv1.2", b"a" * 32, 3600.0)
    b = _native.TlsServerConfig(*pems, "TLSv1.2", b"a" * 32, 3600.0)
    other = _native.TlsServerConfig(*pems, "TLSv1.2", b"o" * 32, 3600.0)
    s = a.accept()
    assert s.handshaking and s.version is None and s.cipher is None
    obj = handshake(s)
    assert (s.version, s.cipher, s.bits) == (obj.version(), obj.cipher()[0], obj.cipher()[2])
    assert not s.resumed and not s.handshaking
    s = b.accept()
    obj = handshake(s, session=obj.session)
    assert s.resumed and obj.session_reused, "another worker's config opens the ticket"
    s = other.accept()
    assert not handshake(s, session=obj.session).session_reused and not s.resumed


def test_tls12_names_and_the_minimum_version(pems):
    s = _native.TlsServerConfig(*pems, "TLSv1.2", b"a" * 32, 3600.0).accept()
    obj = handshake(s, max_version=ssl.TLSVersion.TLSv1_2)
    assert (s.version, s.cipher, s.bits) == ("TLSv1.2", obj.cipher()[0], 256)
    assert s.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    s = _native.TlsServerConfig(*pems, "TLSv1.3", b"a" * 32, 3600.0).accept()
    with pytest.raises(_native.TlsError) as e:
        handshake(s, max_version=ssl.TLSVersion.TLSv1_2)
    assert e.value.kind == "validation-failure" and isinstance(e.value, OSError)
    assert s.close()[:1] == b"\x15"  # the alert to send


def test_bad_configs_are_value_errors_naming_the_problem(pems):
    cert, key = pems
    cases = [
        ((b"", key), "no certificate"),
        ((cert, b""), "no private key"),
        ((cert, key, "TLSv1.1"), "TLSv1.1"),
        ((cert, key, "TLSv1.2", b"short"), "32 bytes"),
        ((cert, key, "TLSv1.2", b"a" * 32, 0.5), "rotation"),
        ((cert, key, "TLSv1.2", b"a" * 32, -1.0), "rotation"),
    ]
    for args, words in cases:
        with pytest.raises(ValueError, match=words):
            _native.TlsServerConfig(*args)
    with pytest.raises(ValueError, match="no CA certificate"):
        _native.TlsClientConfig(True, b"not a pem")
    with pytest.raises(ValueError, match="invalid server name"):
        _native.TlsClientConfig(False).connect("no such name!")
