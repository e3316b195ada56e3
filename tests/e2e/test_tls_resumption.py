"""TLS session resumption against the real `mta run` with two workers (one server for the
module): Python's ssl with `session=` over STARTTLS and implicit TLS, `openssl s_client
-sess_out/-sess_in`, and mta_tls_handshakes_total on /metrics. Every read has a deadline."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
from conftest import free_port, start_server
from test_http import scrape, wait_for
from test_http import wait_listening as wait_http
from test_tls import selfsigned, wait_log

WORKERS = 2


@pytest.fixture(scope="module", params=["rustls", "openssl"])
def srv(tmp_path_factory, request):
    """One server per engine (tls.engine): the tickets are rustls's or OpenSSL's through
    mta.smtp.tickets, both from the workers' shared secret."""
    tmp = tmp_path_factory.mktemp("resume")
    certs = selfsigned(tmp / "certs")
    implicit, http = free_port(), free_port()
    config = (f"workers = {WORKERS}\n"
              f'[[listener]]\naddress = "127.0.0.1:{implicit}"\nprofile = "submission"\ntls = "implicit"\n'
              f'[tls]\nengine = "{request.param}"\ncert = "{certs / "cert.pem"}"\nkey = "{certs / "key.pem"}"\n')
    server = start_server(tmp, config=config, args=("--http", f"127.0.0.1:{http}"))
    server.implicit_port, server.http_port = implicit, http
    wait_http(server, WORKERS)
    yield server
    server.stop()


def client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def lines(f) -> list[bytes]:
    """One SMTP reply's lines."""
    out = []
    while True:
        line = f.readline()
        assert line, "connection closed"
        out.append(line)
        if line[3:4] != b"-":
            return out


def starttls(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession]:
    """EHLO, STARTTLS, the handshake (offering `session`), EHLO again, QUIT:
    (resumed?, the session to offer next)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        f = raw.makefile("rb")
        assert lines(f)[0].startswith(b"220")
        raw.sendall(b"EHLO client.test\r\n")
        assert any(b"STARTTLS" in x for x in lines(f))
        raw.sendall(b"STARTTLS\r\n")
        assert lines(f)[0].startswith(b"220")
        with ctx.wrap_socket(raw, server_hostname="mx.example.test", session=session) as s:
            tf = s.makefile("rb")
            s.sendall(b"EHLO client.test\r\n")
            assert lines(tf)[0].startswith(b"250")  # the tickets came before this reply
            s.sendall(b"QUIT\r\n")
            assert lines(tf)[0].startswith(b"221")
            return s.session_reused, s.session


def implicit(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw, \
            ctx.wrap_socket(raw, server_hostname="mx.example.test", session=session) as s:
        f = s.makefile("rb")
        assert lines(f)[0].startswith(b"220")
        s.sendall(b"QUIT\r\n")
        assert lines(f)[0].startswith(b"221")
        return s.session_reused, s.session


def worker_pids(srv) -> set[str]:
    """The workers that logged a resumed STARTTLS (by the pid in the log line)."""
    return set(re.findall(r"mta\[(\d+)\]: STARTTLS established .* resumed$", srv.log(), re.MULTILINE))


def test_python_client_resumes_every_starttls_after_the_first(srv):
    ctx = client_ctx()
    reused, session = starttls(srv.port, ctx, None)
    assert not reused
    got = []
    for _ in range(20):  # fresh connections: SO_REUSEPORT spreads them over both workers
        reused, session = starttls(srv.port, ctx, session)
        got.append(reused)
    assert all(got), got
    assert len(worker_pids(srv)) == WORKERS  # each worker opened tickets (2 in 2**20 may miss one)


def test_openssl_s_client_reuses_its_saved_session(srv, tmp_path):
    openssl = shutil.which("openssl")
    assert openssl, "openssl (s_client) is not installed: scripts/test installs it"
    sess = tmp_path / "sess.pem"
    # -ign_eof: s_client sends QUIT and reads until the server closes, so the tickets that
    # follow the handshake are in (at end of input alone it may quit before they arrive)
    base = [openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{srv.port}",
            "-servername", "mx.example.test", "-ign_eof"]

    def run(*extra: str) -> str:
        p = subprocess.run(base + list(extra), input=b"QUIT\r\n", capture_output=True, timeout=30, check=False)
        return p.stdout.decode(errors="replace")

    first = run("-sess_out", str(sess))
    assert "New, TLSv1.3" in first and sess.stat().st_size > 0
    for _ in range(4):  # either worker
        out = run("-sess_in", str(sess))
        assert "Reused, TLSv1.3" in out, out[-2000:]


def test_implicit_tls_resumes_too(srv):
    ctx = client_ctx()
    reused, session = implicit(srv.implicit_port, ctx, None)
    assert not reused
    for _ in range(6):
        reused, session = implicit(srv.implicit_port, ctx, session)
        assert reused
    # a STARTTLS ticket opens on the implicit-TLS listener, and back
    _, session = starttls(srv.port, ctx, None)
    reused, session = implicit(srv.implicit_port, ctx, session)
    assert reused
    assert starttls(srv.port, ctx, session)[0]


def test_metric_counts_full_and_resumed_handshakes(srv):
    def now() -> tuple[float, float]:
        got = scrape(srv.http_port)
        return (got.get(("mta_tls_handshakes_total", (("direction", "in"), ("resumed", "no"))), 0),
                got.get(("mta_tls_handshakes_total", (("direction", "in"), ("resumed", "yes"))), 0))
    time.sleep(1.2)  # the other worker's snapshot catches up with the tests before
    full, resumed = now()
    ctx = client_ctx()
    _, session = starttls(srv.port, ctx, None)
    for _ in range(3):
        session = starttls(srv.port, ctx, session)[1]
    _, session = implicit(srv.implicit_port, ctx, None)
    session = implicit(srv.implicit_port, ctx, session)[1]
    want = {("mta_tls_handshakes_total", (("direction", "in"), ("resumed", "no"))): full + 2,
            ("mta_tls_handshakes_total", (("direction", "in"), ("resumed", "yes"))): resumed + 4}
    assert wait_for(srv.http_port, want, timeout=10) == want


def test_tickets_outlive_a_reload(srv):
    ctx = client_ctx()
    _, before = starttls(srv.port, ctx, None)
    _, before_implicit = implicit(srv.implicit_port, ctx, None)
    srv.proc.send_signal(signal.SIGHUP)  # every worker builds a new context from the files
    wait_log(srv, "tls: reloaded certificate", count=WORKERS)
    assert starttls(srv.port, ctx, before)[0]
    assert implicit(srv.implicit_port, ctx, before_implicit)[0]
