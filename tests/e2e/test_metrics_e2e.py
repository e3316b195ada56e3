"""/metrics beyond the contract families, end to end: after known traffic (deliveries, bounces,
failed STARTTLS and implicit-TLS handshakes, connections refused by a limit) the new families
equal it, with 1 and 2 workers, with and without the delivery agent (prometheus_client parses)."""

from __future__ import annotations

import re
import smtplib
import socket
import time

import pytest

from conftest import free_port
from helpers import Client
from plugin_probes import plugin_env
from test_http import BOUNCED_SENT, OK_SENT, get, scrape, wait_for, wait_listening
from test_tls import selfsigned

PLUGIN = '''
def on_rcpt(tx, address):
    return None
'''


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return selfsigned(tmp_path_factory.mktemp("certs"))


def config(ok_port: int, bad_port: int, implicit_port: int, certs, agent: bool) -> str:
    return (
        'local_domains = ["sender.test"]\n'
        'local_recipients = ["alice"]\n'
        "[delivery]\n"
        f'retry_schedule = ["1s"]\nretry_jitter = 0\ntls = "none"\nagent = {str(agent).lower()}\n'
        "[transport]\n"
        f'"good.test" = "smarthost 127.0.0.1:{ok_port}"\n'
        f'"bad.test" = "smarthost 127.0.0.1:{bad_port}"\n'
        "[limits]\napply_to_mynetworks = true\nmax_connections_per_ip = 2\n"
        '[[plugin]]\nmodule = "metrics_probe"\n'
        f'[[listener]]\naddress = "127.0.0.1:{implicit_port}"\nprofile = "submission"\ntls = "implicit"\n'
        f'[tls]\ncert = "{certs / "cert.pem"}"\nkey = "{certs / "key.pem"}"\n'
    )


def send_traffic(port: int) -> None:
    for i in range(OK_SENT):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            assert c.sendmail("alice@sender.test", [f"u{i}@good.test"], f"Subject: ok {i}\r\n\r\n{'x' * i}\r\n") == {}
    for i in range(BOUNCED_SENT):  # null sender: no DSN
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            assert c.sendmail("", [f"u{i}@bad.test"], f"Subject: bad {i}\r\n\r\nx\r\n") == {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail("alice@sender.test", ["nobody@sender.test"], "Subject: no\r\n\r\nx\r\n")


def failed_starttls(port: int) -> None:
    """EHLO, STARTTLS, then bytes that are no ClientHello: the handshake fails."""
    with Client(("127.0.0.1", port)) as c:
        c.reply()
        c.cmd("EHLO client.test")
        assert c.cmd("STARTTLS").code == 220
        c.send(b"this is not TLS\r\n" * 20)
        c.read_to_close()


def failed_implicit(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"EHLO plain.test\r\n" * 20)
        s.settimeout(15)
        while s.recv(4096):
            pass


def refused_by_limit(port: int, attempts: int) -> tuple[int, int]:
    """Hold connections open until each worker has refused some (2 per IP allowed):
    (greeted, refused) as the client saw them. The greeted ones QUIT at the end."""
    held, greeted, refused = [], 0, 0
    try:
        for _ in range(attempts):
            c = Client(("127.0.0.1", port))
            code = c.reply().code
            if code == 220:
                greeted += 1
                held.append(c)
            else:
                assert code == 421
                refused += 1
                c.close()
    finally:
        for c in held:
            c.cmd("QUIT")
            c.close()
    return greeted, refused


def accepted_bytes(log: str) -> int:
    return sum(int(n) for n in re.findall(r"queued \S+ from=<[^>]*> nrcpt=\d+ size=(\d+)", log))


@pytest.mark.parametrize("workers,agent", [(1, False), (1, True), (2, False), (2, True)])
def test_new_families_equal_the_traffic(server_factory, peer_factory, certs, tmp_path, workers, agent):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "metrics_probe.py").write_text(PLUGIN)
    ok, bad = peer_factory(), peer_factory(rcpt=lambda a, n, p: "550 5.1.1 no such user here")
    http_port, implicit_port = free_port(), free_port()
    srv = server_factory(config=config(ok.port, bad.port, implicit_port, certs, agent), deliver=True,
                         env=plugin_env(plugins),
                         args=("--http", f"127.0.0.1:{http_port}", "--workers", str(workers)))
    wait_listening(srv, workers)
    assert get(http_port, "/health") == (200, "ok\n")
    send_traffic(srv.port)
    failed_starttls(srv.port)
    failed_implicit(implicit_port)
    greeted, refused = refused_by_limit(srv.port, 3 * workers + 2)
    assert refused >= 1

    sent = OK_SENT + BOUNCED_SENT
    main, implicit = f"127.0.0.1:{srv.port}", f"127.0.0.1:{implicit_port}"
    # Greetings on the main listener: each message's connection, the refused recipient's,
    # the harness's start probe, the STARTTLS one and the held ones.
    greetings = sent + 1 + 1 + 1 + greeted
    want = {
        ("mta_connection_outcomes_total", (("listener", main), ("outcome", "accepted"))): greetings,
        ("mta_connection_outcomes_total", (("listener", main), ("outcome", "refused_limit"))): refused,
        ("mta_connection_outcomes_total", (("listener", main), ("outcome", "tls_failed"))): 1,
        ("mta_connection_outcomes_total", (("listener", implicit), ("outcome", "tls_failed"))): 1,
        ("mta_connection_outcomes_total", (("listener", implicit), ("outcome", "accepted"))): 0,
        ("mta_connections_total", (("listener", main), ("profile", "mx"))): greetings + refused,
        ("mta_connections_open", (("listener", main),)): 0,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "connect"))): greetings,
        ("mta_smtp_replies_by_verb_total", (("class", "4xx"), ("verb", "connect"))): refused,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "ehlo"))): sent + 2,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "mail"))): sent + 1,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "rcpt"))): sent,
        ("mta_smtp_replies_by_verb_total", (("class", "5xx"), ("verb", "rcpt"))): 1,
        ("mta_smtp_replies_by_verb_total", (("class", "3xx"), ("verb", "data"))): sent,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "data"))): sent,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "rset"))): 1,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "quit"))): sent + 2 + greeted,
        ("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "starttls"))): 1,
        ("mta_accepted_bytes_total", ()): accepted_bytes(srv.log()),
        # Both peers are smarthosts on 127.0.0.1: one site (its shaping site is the host).
        ("mta_deliveries_by_site_total", (("result", "delivered"), ("site", "127.0.0.1"))): OK_SENT,
        ("mta_deliveries_by_site_total", (("result", "bounced"), ("site", "127.0.0.1"))): BOUNCED_SENT,
        ("mta_deliveries_by_site_total", (("result", "delivered"), ("site", "other"))): 0,
        ("mta_delivery_latency_seconds_count", ()): sent,
        ("mta_plugin_hook_calls_total", (("hook", "on_rcpt"), ("plugin", "metrics_probe"))): sent,
        ("mta_plugin_hook_failures_total", (("hook", "on_rcpt"), ("plugin", "metrics_probe"))): 0,
        ("mta_queue_messages", (("state", "deferred"),)): 0,
        ("mta_queue_suspended_messages", ()): 0,
    }
    assert want[("mta_accepted_bytes_total", ())] > 0
    assert wait_for(http_port, want, timeout=20) == want
    # The spool's figures come with each worker's periodic snapshot, which may trail the
    # reply counters by one period: wait for the snapshot that has every message's sync.
    deadline = time.monotonic() + 20
    got = scrape(http_port)
    while got[("mta_spool_syncs_total", ())] < sent and time.monotonic() < deadline:
        time.sleep(0.2)
        got = scrape(http_port)
    syncs = got[("mta_spool_syncs_total", ())]
    assert syncs >= sent and got[("mta_spool_sync_seconds_count", ())] == syncs
    assert got[("mta_spool_sync_seconds_bucket", (("le", "+Inf"),))] == syncs
    assert got[("mta_spool_batch_messages_sum", ())] >= sent
    assert got[("mta_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == sent
    assert got[("mta_plugin_hook_seconds_total", (("hook", "on_rcpt"), ("plugin", "metrics_probe")))] > 0
    assert got[("mta_queue_oldest_message_age_seconds", ())] >= 0
    # The connection to the good peer, pooled (idle for 5 s), in the worker's scan or the
    # agent's snapshot: each is up to a second behind the counters above.
    deadline = time.monotonic() + 4
    while True:
        pooled = {dict(k[1])["site"]: v for k, v in scrape(http_port).items()
                  if k[0] == "mta_delivery_connections" and dict(k[1])["state"] == "idle"}
        if pooled.get(f"smarthost:127.0.0.1:{ok.port}", 0) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # (one per message delivered at once at most: they may overlap)
    assert 1 <= pooled.get(f"smarthost:127.0.0.1:{ok.port}", 0) <= OK_SENT, pooled
