"""Outbound TLS session resumption (mta.delivery.smtp.tlsclient) against a real TLS peer
(aiosmtpd on Python's ssl, which issues TLS 1.3 tickets): each new connection to a destination
resumes the session of the one before, a session is only offered to the name and the kind of
verification it was made with, and the handshakes are counted for /metrics."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from mta._native import TlsClientConfig
from mta.delivery.smtp.client import SmtpOptions
from mta.delivery.smtp.tlsclient import ClientTls
from smtpkit import Capture, aiosmtpd_peer, client, make_cert, message, run, server_tls, target

ONE_EACH = dict(helo="client.test", connect_timeout=5.0, max_messages_per_connection=1)


def counts(d) -> tuple[int, int]:
    return d.tls.full, d.tls.resumed


@pytest.mark.parametrize("loop,engine", [("asyncio", "rustls"), ("uvloop", "rustls"), ("asyncio", "openssl"),
                                         ("uvloop", "openssl")])
def test_each_new_connection_resumes_the_last_session(tmp_path, loop, engine):
    cert, key = make_cert(tmp_path)
    h = Capture()

    async def go(port):
        d = client()
        results = []
        for i in range(5):  # one message per connection: five connections, five handshakes
            results += await d.deliver("k", [target(port, "mx.test")], SmtpOptions(**ONE_EACH, tls_engine=engine),
                                       message(f"r{i}@dst.test"))
        series = d.metrics_series()
        await d.close()
        return d, results, series

    with aiosmtpd_peer(h, tls_context=server_tls(cert, key)) as port:
        d, results, series = run(go(port), loop)
    assert [r.code for r in results] == [250] * 5
    assert [e["tls"] for e in h.envelopes] == [True] * 5
    assert d.connections_opened == 5
    assert counts(d) == (1, 4)
    tls = {s[1]["resumed"]: s[2] for s in series if s[0] == "mta_tls_handshakes"}
    assert tls == {"no": 1, "yes": 4}


def test_verified_sessions_stay_with_their_name_and_kind(tmp_path):
    cert, key = make_cert(tmp_path)
    h = Capture()
    verified = SmtpOptions(**ONE_EACH, tls="required", ca_file=cert)

    async def go(port):
        d = client()
        steps = []

        async def send(host, opts, rcpt):
            res = await d.deliver(host, [target(port, host)], opts, message(rcpt))
            steps.append((res[0].code, counts(d)))

        await send("mx.test", SmtpOptions(**ONE_EACH), "a@dst.test")  # opportunistic: full
        await send("mx.test", verified, "b@dst.test")  # not the unverified session: full
        await send("mx.test", verified, "c@dst.test")  # the verified one: resumed
        await send("wrong.test", verified, "d@dst.test")  # another name: full, and refused
        await send("mx.test", SmtpOptions(**ONE_EACH), "e@dst.test")  # opportunistic again: resumed
        await d.close()
        return steps

    with aiosmtpd_peer(h, tls_context=server_tls(cert, key)) as port:
        steps = run(go(port))
    assert steps[0] == (250, (1, 0))
    assert steps[1] == (250, (2, 0))
    assert steps[2] == (250, (2, 1))
    # The certificate names mx.test: wrong.test fails verification even though a verified
    # session for the same address is at hand (it is never offered to another name).
    assert steps[3][0] == 451 and steps[3][1] == (2, 1)
    assert steps[4] == (250, (2, 2))
    assert [e["rcpt_tos"] for e in h.envelopes] == [["a@dst.test"], ["b@dst.test"], ["c@dst.test"],
                                                    ["e@dst.test"]]


def test_a_session_the_server_cannot_resume_is_replaced(tmp_path):
    """A restarted peer (a new ticket key) refuses the kept session: the handshake is a full
    one, the delivery goes through, and the new session is the one offered next."""
    cert, key = make_cert(tmp_path)
    h = Capture()

    async def go(port):
        d = client()
        for rcpt in ("a@dst.test", "b@dst.test"):
            await d.deliver("k", [target(port)], SmtpOptions(**ONE_EACH), message(rcpt))
        await d.close()
        return d

    async def again(d, port):
        out = []
        for rcpt in ("c@dst.test", "d@dst.test"):
            res = await d.deliver("k", [target(port)], SmtpOptions(**ONE_EACH), message(rcpt))
            out.append((res[0].code, counts(d)))
        await d.close()
        return out

    with aiosmtpd_peer(h, tls_context=server_tls(cert, key)) as port:
        d = run(go(port))
    assert counts(d) == (1, 1)
    with aiosmtpd_peer(h, tls_context=server_tls(cert, key)) as port:  # a new context: new keys
        out = run(again(d, port))
    assert out == [(250, (2, 1)), (250, (2, 2))]


def test_contexts_are_made_once_per_kind_and_a_bad_ca_file_defers(tmp_path):
    tls = ClientTls()
    assert tls.context(False, None) is tls.context(False, "/ignored/for/opportunistic")
    assert isinstance(tls.context(False, None, "rustls"), TlsClientConfig)
    assert tls.context(False, None, "rustls") is tls.context(False, None, "rustls")
    assert isinstance(tls.context(True, None, "rustls"), ssl.SSLContext)  # verified: always OpenSSL
    assert tls.context(True, None) is tls.context(True, None)
    assert tls.context(True, None) is not tls.context(False, None)
    assert tls.context(True, None).verify_mode == ssl.CERT_REQUIRED and tls.context(True, None).check_hostname
    assert tls.context(False, None).verify_mode == ssl.CERT_NONE
    before = tls.context(False, None)
    tls.forget()
    assert tls.context(False, None) is not before
    with pytest.raises((ssl.SSLError, OSError)):
        tls.context(True, str(tmp_path / "missing.pem"))

    cert, key = make_cert(tmp_path)
    h = Capture()

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], SmtpOptions(**ONE_EACH, tls="required",
                                                               ca_file=str(tmp_path / "missing.pem")),
                              message("a@dst.test"))
        await d.close()
        return res

    with aiosmtpd_peer(h, tls_context=server_tls(cert, key)) as port:
        res = run(go(port))
    assert (res[0].code, res[0].enhanced, res[0].status) == (451, "4.7.5", "deferred")
    assert "missing.pem" in res[0].text and h.envelopes == []


def test_the_session_cache_is_bounded(tmp_path, monkeypatch):
    from mta.delivery.smtp import tlsclient

    monkeypatch.setattr(tlsclient, "MAX_SESSIONS", 5)
    cert, key = make_cert(tmp_path)
    sctx = server_tls(cert, key)
    tls = ClientTls()
    ctx = tls.context(False, None)
    # Real sessions from in-memory handshakes, each kept under the name it was made for.
    for n in range(8):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        c = ctx.wrap_bio(incoming, outgoing, server_hostname=f"h{n}.test")
        s = sctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side, src, dst in ((c, outgoing, s_in), (s, s_out, incoming)):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                dst.write(src.read())
        s.write(b"x")
        incoming.write(s_out.read())
        assert c.read(1) == b"x"  # the ticket came with the data
        tls.established(ctx, c)
    assert list(ctx.sessions) == [f"h{n}.test" for n in range(3, 8)]  # the newest 5
    assert tls.full == 8


@pytest.mark.parametrize("engine", ["rustls", "openssl"])
def test_a_failed_handshake_gives_back_its_connection_slot(engine):
    """With one shared connection slot for the site, a handshake the peer breaks off must give
    the slot back (with rustls no connection_lost comes for it), or the retry in clear that
    opportunistic TLS makes would wait for it for ever."""
    from mta.delivery.shaping.throttle import ProcessThrottle
    from mta.delivery.smtp.client import SmtpDelivery
    from smtpkit import scripted_server

    log: list[bytes] = []

    async def go():
        srv, port = await scripted_server(log, pipelining=True, broken_tls=True)
        d = SmtpDelivery(ProcessThrottle())
        for name in ("greeting", "helo", "starttls", "rset", "mail", "rcpt", "data_init", "data_block", "data_done"):
            setattr(d, f"{name}_timeout", 10.0)
        opts = SmtpOptions(helo="c.test", tls_engine=engine, shape_key="default|site.test", shaped=True,
                           max_connections=1)
        res = await asyncio.wait_for(d.deliver("k", [target(port)], opts, message("a@dst.test")), 20)
        await d.close()
        srv.close()
        return res, d.connections_opened

    res, opened = run(go())
    assert res[0].code == 250 and opened == 2  # the TLS attempt, then the retry in clear
    assert log.count(b"STARTTLS\r\n") == 1
