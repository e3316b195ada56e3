"""MTA-STS end to end: the real `mta run` relays mail for dest.test, finding its MX
and its policy through the loopback DNS server, fetching the policy over HTTPS
from 127.0.0.1, and delivering to an aiosmtpd peer on 127.0.0.2 (with or
without STARTTLS) whose certificates come from a CA made for the test.

(Named test_mtasts_e2e.py: a second tests/**/test_mtasts.py would clash with the
unit tests' module name under pytest's default import mode.)"""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

import pytest
from dnsserver import DNSServer
from ststools import CA, PolicyServer, policy_text, smtp_peer

MX_IP = "127.0.0.2"


@pytest.fixture
def env(tmp_path):
    ca = CA(tmp_path / "ca")
    with DNSServer() as dns, PolicyServer(ca.server_context("mta-sts.dest.test"), policy_text("enforce")) as web:
        dns.add("dest.test", [("MX", "10 mx.dest.test")])
        dns.add("mx.dest.test", [("A", MX_IP)])
        dns.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=1"', 0)])
        dns.add("mta-sts.dest.test", [("A", "127.0.0.1")])
        yield ca, dns, web


def config(tmp_path: Path, ca: CA, dns: DNSServer, web: PolicyServer, smtp_port: int) -> str:
    return f"""
[delivery]
smtp_port = {smtp_port}
mta_sts = true
mta_sts_port = {web.port}
mta_sts_ca_file = "{ca.path}"
tls_ca_file = "{ca.path}"
log_file = "{tmp_path / 'delivery.log'}"
retry_schedule = ["1h"]

[dns]
nameservers = {json.dumps(dns.nameservers)}
port = {dns.port}
timeout = "2s"
"""


def send(srv, *rcpts: str, subject: str = "t") -> None:
    with smtplib.SMTP(*srv.addr, timeout=30) as c:
        c.sendmail("from@src.test", list(rcpts), f"Subject: {subject}\r\n\r\nhello\r\n".encode())


def records(tmp_path: Path, count: int, timeout: float = 30.0) -> list[dict]:
    path = tmp_path / "delivery.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            recs = [json.loads(x) for x in path.read_text().splitlines()]
            if len(recs) >= count:
                return recs
        time.sleep(0.05)
    raise AssertionError(f"{count} delivery log records expected, got: "
                         f"{path.read_text() if path.exists() else 'no log'}")


def test_enforce_delivers_verified_and_fetches_once(env, tmp_path, server_factory):
    ca, dns, web = env
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test")) as (port, sink):
        srv = server_factory(config=config(tmp_path, ca, dns, web, port), deliver=True)
        for i in range(3):
            send(srv, f"rcpt{i}@dest.test", subject=f"m{i}")
            records(tmp_path, i + 1)  # one at a time: the policy is cached, not only shared in flight
        recs = records(tmp_path, 3)
        assert [(r["status"], r["tls"], r["policy"], r["tls_failure"]) for r in recs] \
            == [("delivered", "verified", "mta-sts-enforce", None)] * 3
        assert all(r["remote_host"] == "mx.dest.test" and r["remote_ip"] == MX_IP for r in recs)
        assert len(sink.messages) == 3 and all(m["tls"] for m in sink.messages)
        assert web.count == 1
        # a new id: the policy is fetched again (now testing mode, still verified)
        dns.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=2"', 0)])
        web.body = policy_text("testing")
        send(srv, "rcpt9@dest.test")
        rec = records(tmp_path, 4)[3]
        assert (rec["status"], rec["tls"], rec["policy"]) == ("delivered", "verified", "mta-sts-testing")
        assert web.count == 2
        assert srv.stop() == 0
    reports = [json.loads(line.split("tls-report ", 1)[1]) for line in srv.log().splitlines()
               if "tls-report " in line]
    assert {(r["domain"], r["policy"], r["sessions"], r["failed"]) for r in reports} \
        == {("dest.test", "mta-sts-enforce", 3, 0), ("dest.test", "mta-sts-testing", 1, 0)}


def test_enforce_without_starttls_defers_and_sends_nothing(env, tmp_path, server_factory):
    ca, dns, web = env
    with smtp_peer(MX_IP) as (port, sink):
        srv = server_factory(config=config(tmp_path, ca, dns, web, port), deliver=True)
        send(srv, "rcpt@dest.test")
        (rec,) = records(tmp_path, 1)
        assert (rec["status"], rec["tls"], rec["policy"], rec["tls_failure"]) \
            == ("deferred", "failed", "mta-sts-enforce", "starttls-not-supported")
        assert rec["reply"].startswith("451 4.7.5 ")
        time.sleep(0.3)
        assert sink.messages == []
        q = srv.queue()
        assert len(q) == 1 and q[0]["recipients"][0]["state"] == "deferred"
        srv.stop()
    report = [json.loads(line.split("tls-report ", 1)[1]) for line in srv.log().splitlines()
              if "tls-report " in line]
    assert report and report[0]["failures"] == {"starttls-not-supported": 1}


def test_enforce_with_no_matching_mx_defers(env, tmp_path, server_factory):
    ca, dns, web = env
    web.body = policy_text("enforce", ("*.mail.dest.test",))
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test")) as (port, sink):
        srv = server_factory(config=config(tmp_path, ca, dns, web, port), deliver=True)
        send(srv, "rcpt@dest.test")
        (rec,) = records(tmp_path, 1)
        assert rec["status"] == "deferred"
        assert rec["reply"] == "451 4.7.5 MTA-STS: no MX host matches the policy"
        assert (rec["policy"], rec["tls_failure"]) == ("mta-sts-enforce", "mx-mismatch")
        time.sleep(0.3)
        assert sink.messages == []


def test_testing_mode_delivers_and_logs_would_fail(env, tmp_path, server_factory):
    ca, dns, web = env
    web.body = policy_text("testing")
    with smtp_peer(MX_IP) as (port, sink):
        srv = server_factory(config=config(tmp_path, ca, dns, web, port), deliver=True)
        send(srv, "rcpt@dest.test")
        (rec,) = records(tmp_path, 1)
        assert (rec["status"], rec["tls"], rec["policy"], rec["tls_failure"]) \
            == ("delivered", "none", "mta-sts-testing", "starttls-not-supported")
        assert len(sink.messages) == 1
        srv.stop()
    assert "would fail under enforce" in srv.log()


def test_mta_sts_off_delivers_as_usual(env, tmp_path, server_factory):
    ca, dns, web = env
    with smtp_peer(MX_IP) as (port, sink):
        cfg = config(tmp_path, ca, dns, web, port).replace("mta_sts = true", "mta_sts = false")
        srv = server_factory(config=cfg, deliver=True)
        send(srv, "rcpt@dest.test")
        (rec,) = records(tmp_path, 1)
        assert (rec["status"], rec["tls"], rec["policy"]) == ("delivered", "none", "none")
        assert len(sink.messages) == 1 and web.count == 0
