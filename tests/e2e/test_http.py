"""The HTTP listener end to end: /metrics equals the traffic sent (one worker and two),
/health answers 200 while serving and 503 while stopping, and a second server cannot
take the same HTTP port."""

from __future__ import annotations

import signal
import smtplib
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mta.app.metrics import SNAPSHOT_EVERY

from conftest import free_port, start_server
from helpers import Client

OK_SENT, BOUNCED_SENT = 3, 2


def config(ok_port: int, bad_port: int) -> str:
    return (
        'local_domains = ["sender.test"]\n'
        'local_recipients = ["alice"]\n'
        "[delivery]\n"
        'retry_schedule = ["1s"]\nretry_jitter = 0\ntls = "none"\n'
        "[transport]\n"
        f'"good.test" = "smarthost 127.0.0.1:{ok_port}"\n'
        f'"bad.test" = "smarthost 127.0.0.1:{bad_port}"\n'
    )


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[tuple, float]:
    status, text = get(port, "/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def send_traffic(port: int) -> None:
    """One connection per message (so two workers both take some)."""
    for i in range(OK_SENT):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            assert c.sendmail("alice@sender.test", [f"u{i}@good.test"], f"Subject: ok {i}\r\n\r\nx\r\n") == {}
    for i in range(BOUNCED_SENT):  # null sender: no DSN, so no delivery beyond these
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            assert c.sendmail("", [f"u{i}@bad.test"], f"Subject: bad {i}\r\n\r\nx\r\n") == {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # 550 at RCPT, then RSET
            c.sendmail("alice@sender.test", ["nobody@sender.test"], "Subject: no\r\n\r\nx\r\n")


def expected(listener: str) -> dict[tuple, float]:
    sent = OK_SENT + BOUNCED_SENT
    # Per message connection: 220, EHLO, MAIL, RCPT, (354), 250 queued, QUIT; the refused
    # one: 220, EHLO, MAIL, 550, RSET, QUIT; the harness's start probe: 220, QUIT.
    return {
        ("mta_messages_accepted_total", ()): sent,
        ("mta_deliveries_total", (("result", "delivered"),)): OK_SENT,
        ("mta_deliveries_total", (("result", "deferred"),)): 0,
        ("mta_deliveries_total", (("result", "bounced"),)): BOUNCED_SENT,
        ("mta_queue_messages", (("state", "active"),)): 0,
        ("mta_queue_messages", (("state", "deferred"),)): 0,
        ("mta_queue_messages", (("state", "held"),)): 0,
        ("mta_smtp_replies_total", (("class", "2xx"),)): 6 * sent + 5 + 2,
        ("mta_smtp_replies_total", (("class", "3xx"),)): sent,
        ("mta_smtp_replies_total", (("class", "4xx"),)): 0,
        ("mta_smtp_replies_total", (("class", "5xx"),)): 1,
        ("mta_connections_total", (("listener", listener), ("profile", "mx"))): sent + 2,
    }


def wait_listening(srv, workers: int = 1) -> None:
    """Until every worker has logged its HTTP listener."""
    deadline = time.monotonic() + 20
    while srv.log().count("http listening on") < workers and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_for(port: int, want: dict, timeout: float = 15.0) -> dict:
    """Deliveries take their time, and another worker's snapshot lags up to 1 s."""
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(port)
        seen = {k: got.get(k) for k in want}
        if seen == want or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


@pytest.fixture
def peers(peer_factory):
    ok = peer_factory()
    bad = peer_factory(rcpt=lambda a, n, p: "550 5.1.1 no such user here")
    return ok, bad


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_equal_the_traffic(server_factory, peers, workers):
    ok, bad = peers
    http_port = free_port()
    srv = server_factory(config=config(ok.port, bad.port), deliver=True,
                         args=("--http", f"127.0.0.1:{http_port}", "--workers", str(workers)))
    wait_listening(srv, workers)
    assert get(http_port, "/health") == (200, "ok\n")
    send_traffic(srv.port)
    want = expected(f"127.0.0.1:{srv.port}")
    assert wait_for(http_port, want) == want
    assert len(ok.wait_txns(OK_SENT)) == OK_SENT
    # Every worker answers for the whole server: scrape a few times (any worker may answer),
    # once every worker's snapshot is newer than the traffic (a snapshot lags up to 1 s: the
    # worker that answered above may have seen the others' newest while they see its older).
    time.sleep(SNAPSHOT_EVERY + 0.5)
    for _ in range(6):
        got = scrape(http_port)
        assert {k: got.get(k) for k in want} == want


def test_health_is_503_while_stopping(server_factory):
    http_port = free_port()
    srv = server_factory(args=("--http", f"127.0.0.1:{http_port}"))
    assert get(http_port, "/health") == (200, "ok\n")
    c = Client(srv.addr).connect()
    c.greeting()
    c.ehlo()
    c.expect("MAIL FROM:<a@example.test>", 250)  # a transaction in progress holds the stop
    srv.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status, body = get(http_port, "/health")
        time.sleep(0.05)
    assert (status, body) == (503, "stopping\n")
    c.expect("RSET", 250)
    c.close()
    assert srv.proc.wait(15) == 0


def test_second_server_on_the_http_port_fails(server_factory, tmp_path):
    http_port = free_port()
    first = server_factory(args=("--http", f"127.0.0.1:{http_port}"))
    other = tmp_path / "second"  # its own spool: the failure must be the port's
    other.mkdir()
    second = start_server(other, args=("--http", f"127.0.0.1:{http_port}"), wait=False)
    assert second.proc.wait(20) == 1
    assert f"http listener 127.0.0.1:{http_port}" in second.log()
    assert "Address already in use" in second.log()
    assert get(http_port, "/health") == (200, "ok\n")  # the first goes on
    assert first.proc.poll() is None


def test_health_is_503_when_the_spool_cannot_write(server_factory, tmp_path):
    fault = tmp_path / "faults"
    http_port = free_port()
    srv = server_factory(args=("--http", f"127.0.0.1:{http_port}"), env={"MTA_TEST_FAULT_FILE": str(fault)})
    assert get(http_port, "/health") == (200, "ok\n")
    fault.write_text("write 28")  # ENOSPC on every spool write (polled every 0.2 s)
    deadline = time.monotonic() + 10
    refused = False
    while not refused and time.monotonic() < deadline:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as c:
            try:
                c.sendmail("a@example.test", ["b@example.test"], "Subject: x\r\n\r\nx\r\n")
            except smtplib.SMTPDataError as e:
                refused = e.smtp_code == 451
        time.sleep(0.1)
    assert refused
    deadline = time.monotonic() + 3  # the failure is seen at the next metrics tick (1 s)
    while get(http_port, "/health")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(http_port, "/health") == (503, "spool write failed\n")
    got = scrape(http_port)
    assert got[("mta_spool_failed_batches_total", ())] >= 1


def test_command_line_adds_to_the_files_addresses(server_factory):
    in_file, on_line = free_port(), free_port()
    server_factory(config=f'[http]\nlisten = ["127.0.0.1:{in_file}"]\n',
                   args=("--http", f"127.0.0.1:{on_line}", "--http", f"127.0.0.1:{in_file}"))
    assert get(in_file, "/health") == (200, "ok\n")
    assert get(on_line, "/health") == (200, "ok\n")
    assert get(on_line, "/nothing")[0] == 404


def test_https_with_the_tls_certificate(server_factory, tmp_path):
    """http.tls = true: the listener speaks HTTPS with the [tls] certificate, and plain HTTP
    on it gets nothing."""
    import ssl

    from test_tls import selfsigned, tls_config

    certs = selfsigned(tmp_path / "certs")
    http_port = free_port()
    srv = server_factory(config=tls_config(certs, extra="[http]\ntls = true\n"),
                         args=("--http", f"127.0.0.1:{http_port}"))
    assert "(https)" in srv.log()
    ctx = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    ctx.check_hostname = False
    with urllib.request.urlopen(f"https://127.0.0.1:{http_port}/health", timeout=10, context=ctx) as r:
        assert (r.status, r.read()) == (200, b"ok\n")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get(http_port, "/health")
