"""Outbound TLS session resumption end to end: the real `mta run` relays one message per
connection into a private Postfix with STARTTLS (its tlsmgr issues the tickets), and the
handshakes are resumed as /metrics counts them (mta_tls_handshakes_total{direction="out"});
Postfix logs a TLS connection for each. Postfix issues one ticket per full handshake and none
on a resumption: OpenSSL's client offers the same session again and again (every connection
after the first resumes), rustls uses a TLS 1.3 ticket once (RFC 8446 C.4), so every other
connection is a full handshake."""

from __future__ import annotations

import re
import smtplib
import time

import pytest

from conftest import free_port
from postfix_peer import PostfixPeer
from test_http import scrape, wait_listening
from test_tls import selfsigned

MESSAGES = 5
WAIT = 20.0


def out_handshakes(port: int) -> dict[str, float]:
    got = scrape(port)
    return {r: got.get(("mta_tls_handshakes_total", (("direction", "out"), ("resumed", r))), 0.0)
            for r in ("no", "yes")}


EXPECTED = {"openssl": {"no": 1, "yes": MESSAGES - 1}, "rustls": {"no": 3, "yes": 2}}


@pytest.mark.parametrize("engine", ["rustls", "openssl"])
def test_relay_into_postfix_resumes_its_tls_sessions(tmp_path, server_factory, engine):
    certs = selfsigned(tmp_path / "certs")
    pf = PostfixPeer(tmp_path / "pf", domain="dest.test", users=["user"], extra={
        "smtpd_tls_cert_file": str(certs / "cert.pem"), "smtpd_tls_key_file": str(certs / "key.pem"),
        "smtpd_tls_security_level": "may", "smtpd_tls_loglevel": "1",
    })
    http = free_port()
    try:
        pf.start()
        srv = server_factory(config=(
            f'[tls]\nengine = "{engine}"\ncert = "{certs / "cert.pem"}"\nkey = "{certs / "key.pem"}"\n'
            f'[delivery]\ntls = "opportunistic"\nmessages_per_connection = 1\n'
            f'retry_schedule = ["1s"]\nretry_jitter = 0\n'
            f'[http]\nlisten = ["127.0.0.1:{http}"]\n'), deliver=True,
            args=("--relay-to", f"127.0.0.1:{pf.port}"))
        wait_listening(srv)
        for i in range(MESSAGES):  # one after the other, so each connection finds the last session
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
                c.sendmail("alice@sender.test", ["user@dest.test"], f"Subject: resume {i}\r\n\r\nbody {i}\r\n")
            assert len(pf.wait_messages("user", i + 1, timeout=WAIT)) == i + 1, pf.log()[-3000:]
        deadline = time.monotonic() + 10  # the agent's snapshot is written once a second
        while (got := out_handshakes(http)) != EXPECTED[engine] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert got == EXPECTED[engine], (got, srv.log()[-3000:])
        established = re.findall(r"TLS connection established from \S+: TLSv1\.3", pf.log())
        assert len(established) == MESSAGES, pf.log()[-3000:]
    finally:
        pf.stop()
