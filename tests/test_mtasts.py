"""MTA-STS (RFC 8461): parsing, the HTTPS fetch against a real local server, the
cache, and enforcement in the mx delivery path against real SMTP peers on
127.0.0.2, all named through the loopback DNS server (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import pytest
from dnsserver import DNSServer
from ststools import CA, PolicyServer, policy_text, smtp_peer

from mta.delivery import OutMessage, OutRcpt
from mta.delivery.smtp.client import SmtpOptions
from smtpkit import client
from mta.delivery.mx import MxResolver
from mta.delivery.mtasts import (
    MAX_AGE_LIMIT, MtaStsCache, OutboundTls, Policy, PolicyError, TlsCounters, fetch_policy, mx_matches,
    parse_policy, parse_txt,
)

DEADLINE = 60.0
MX_IP = "127.0.0.2"


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, DEADLINE)
    return asyncio.run(bounded())


# --- parsing -------------------------------------------------------------------

def test_txt_record():
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["v=STSv1;id=abc"]) == "abc"
    assert parse_txt(["v=spf1 -all", "v=STSv1; id=abc; ext=1"]) == "abc"  # others ignored, extensions too
    assert parse_txt([]) is None
    assert parse_txt(["v=spf1 -all"]) is None
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # more than one: no policy
    assert parse_txt(["v=STSv1"]) is None  # no id
    assert parse_txt(["v=STSv1; id=a-b"]) is None  # id is alphanumeric
    assert parse_txt(["v=STSv1; id=" + "a" * 33]) is None  # at most 32
    assert parse_txt(["v=STSv10; id=a"]) is None
    assert parse_txt(["id=a; v=STSv1"]) is None  # the version comes first


def test_policy_valid():
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n"
    p = parse_policy(text, "id1")
    assert p == Policy("enforce", ("mail.example.com", "*.example.net"), 604800, "id1")
    assert p.label == "mta-sts-enforce"
    # LF line ends, spacing, unknown keys ignored, a repeated key counts once (the first)
    p = parse_policy("version:STSv1\nmode:   testing  \nfoo: bar\nmx: a.example\nmode: enforce\nmax_age: 86400")
    assert (p.mode, p.mx, p.max_age, p.label) == ("testing", ("a.example",), 86400, "mta-sts-testing")
    p = parse_policy("version: STSv1\nmode: none\nmax_age: 0\n")  # none needs no mx
    assert (p.mode, p.mx, p.max_age, p.label) == ("none", (), 0, "none")


@pytest.mark.parametrize("text, why", [
    ("mode: enforce\nmx: a.example\nmax_age: 1\n", "no version"),
    ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "STSv1"),
    ("version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
    ("version: STSv1\nmode: enforcing\nmx: a.example\nmax_age: 1\n", "mode must be"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "at least one mx"),
    ("version: STSv1\nmode: testing\nmax_age: 1\n", "at least one mx"),
    ("version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1d\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", "mx pattern"),
    ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "mx pattern"),
    ("version: STSv1\nmode: enforce\nmx: mail.example *\nmax_age: 1\n", "mx pattern"),
    ("version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 1\n", "mx pattern"),
    ("<html>oops</html>\n", "not a 'key: value'"),
])
def test_policy_invalid(text, why):
    with pytest.raises(PolicyError, match=why):
        parse_policy(text)


def test_max_age_bounds():
    base = "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {}\n"
    assert parse_policy(base.format(0)).max_age == 0
    assert parse_policy(base.format(MAX_AGE_LIMIT)).max_age == 31557600
    assert parse_policy(base.format(MAX_AGE_LIMIT + 1)).max_age == MAX_AGE_LIMIT  # clamped
    assert parse_policy(base.format(9999999999)).max_age == MAX_AGE_LIMIT  # 10 digits: clamped


def test_mx_patterns():
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert not mx_matches("mail.example.com", "mail2.example.com")
    assert mx_matches("*.example.net", "mx1.example.net")
    assert mx_matches("*.example.net", "MX1.Example.Net.")
    assert not mx_matches("*.example.net", "example.net")  # exactly one label
    assert not mx_matches("*.example.net", "a.b.example.net")
    assert not mx_matches("*.example.net", "mx1.example.network")
    assert not mx_matches("*.example.net", ".example.net")
    p = Policy("enforce", ("mx.dest.test", "*.backup.test"), 60)
    assert p.matches("mx.dest.test") and p.matches("b1.backup.test") and not p.matches("mx.other.test")


# --- the environment: CA, DNS, HTTPS ---------------------------------------------

@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def dns_server():
    with DNSServer() as srv:
        srv.add("dest.test", [("MX", "10 mx.dest.test")])
        srv.add("mx.dest.test", [("A", MX_IP)])
        srv.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=1"', 0)])  # TTL 0: id changes show at once
        srv.add("mta-sts.dest.test", [("A", "127.0.0.1")])
        yield srv


@pytest.fixture
def policy_server(ca):
    with PolicyServer(ca.server_context("mta-sts.dest.test"), policy_text("enforce")) as srv:
        yield srv


def resolver(dns_server) -> MxResolver:
    return MxResolver(dns_server.nameservers, port=dns_server.port, timeout=2.0)


def cache(dns_server, policy_server, ca, **kw) -> MtaStsCache:
    kw.setdefault("timeout", 5.0)
    return MtaStsCache(resolver(dns_server), port=policy_server.port, ca_file=ca.path, **kw)


# --- the fetch ---------------------------------------------------------------------

def test_fetch_policy_over_https(ca, policy_server):
    text = run(fetch_policy("mta-sts.dest.test", ["127.0.0.1"], policy_server.port, ca_file=ca.path))
    assert text == policy_text("enforce")
    assert policy_server.requests == [("/.well-known/mta-sts.txt", f"mta-sts.dest.test:{policy_server.port}")]
    policy_server.chunked = True
    assert run(fetch_policy("mta-sts.dest.test", ["127.0.0.1"], policy_server.port, ca_file=ca.path)) \
        == policy_text("enforce")


def test_fetch_refuses_bad_answers(ca, policy_server, tmp_path):
    def fetch(**kw):
        kw.setdefault("ca_file", ca.path)
        kw.setdefault("timeout", 5.0)
        return run(fetch_policy(kw.pop("host", "mta-sts.dest.test"), ["127.0.0.1"], policy_server.port, **kw))

    with pytest.raises(PolicyError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(ca_file=None)  # the system store does not know our CA
    with pytest.raises(PolicyError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(host="mta-sts.other.test")  # the certificate is for another name
    policy_server.status = 404
    with pytest.raises(PolicyError, match="HTTP status 404"):
        fetch()
    policy_server.status = 302
    with pytest.raises(PolicyError, match="HTTP status 302"):  # redirects are not followed
        fetch()
    policy_server.status = 200
    policy_server.content_type = "text/html"
    with pytest.raises(PolicyError, match="text/plain"):
        fetch()
    policy_server.content_type = "text/plain"
    policy_server.body = "x" * (64 * 1024 + 1)
    with pytest.raises(PolicyError, match="larger than 65536"):
        fetch()
    policy_server.chunked = True
    with pytest.raises(PolicyError, match="larger than 65536"):
        fetch()
    policy_server.body = "x" * (64 * 1024)
    assert len(fetch()) == 64 * 1024
    with pytest.raises(PolicyError, match="ConnectionRefused"):
        run(fetch_policy("mta-sts.dest.test", ["127.0.0.1"], _closed_port(), ca_file=ca.path))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_times_out_on_a_silent_server(ca):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        started = time.monotonic()
        with pytest.raises(PolicyError, match="timed out"):
            run(fetch_policy("mta-sts.dest.test", ["127.0.0.1"], s.getsockname()[1], ca_file=ca.path,
                             timeout=0.5))
        assert time.monotonic() - started < 5


# --- the cache ----------------------------------------------------------------------

def test_policy_is_fetched_once_and_refetched_when_the_id_changes(ca, dns_server, policy_server):
    async def main():
        c = cache(dns_server, policy_server, ca)
        many = await asyncio.gather(*(c.policy("dest.test") for _ in range(5)))  # concurrent: one fetch
        again = [await c.policy("Dest.Test.") for _ in range(3)]  # sequential: cached
        assert c.fetches == 1 and policy_server.count == 1
        assert all(p == many[0] for p in many + again)
        assert many[0] == Policy("enforce", ("mx.dest.test",), 86400, "1")
        # a new id: fetched again, the new policy in force
        dns_server.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=2"', 0)])
        policy_server.body = policy_text("testing", ("*.dest.test",))
        p = await c.policy("dest.test")
        assert (p.mode, p.mx, p.id) == ("testing", ("*.dest.test",), "2")
        assert await c.policy("dest.test") == p
        assert policy_server.count == 2
        # the TXT record removed: the cached policy stays in force until it expires
        dns_server.add("_mta-sts.dest.test", [])
        assert await c.policy("dest.test") == p
        dns_server.add("_mta-sts.dest.test", "servfail")
        assert await c.policy("dest.test") == p
        assert policy_server.count == 2
    run(main())


def test_policy_expires_after_max_age(ca, dns_server, policy_server):
    policy_server.body = policy_text("enforce", max_age=1)

    async def main():
        c = cache(dns_server, policy_server, ca)
        assert (await c.policy("dest.test")).max_age == 1
        assert policy_server.count == 1
        await asyncio.sleep(1.1)
        assert c.cached("dest.test") is None
        assert (await c.policy("dest.test")).max_age == 1  # same id, but expired: fetched again
        assert policy_server.count == 2
    run(main())


def test_no_policy_cases(ca, dns_server, policy_server):
    async def main():
        c = cache(dns_server, policy_server, ca)
        assert await c.policy("[192.0.2.1]") is None  # literals have no policy
        dns_server.add("_mta-sts.dest.test", [("TXT", '"v=spf1 -all"', 0)])
        assert await c.policy("dest.test") is None
        assert await c.policy("nowhere.test") is None  # NXDOMAIN
        assert policy_server.count == 0
        # a TXT record, but the policy is invalid: no policy, and not refetched at once
        dns_server.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=7"', 0)])
        policy_server.body = "version: STSv1\nmode: enforce\nmax_age: 10\n"
        assert await c.policy("dest.test") is None
        assert await c.policy("dest.test") is None
        assert policy_server.count == 1
        c.fetch_retry = 0.0
        policy_server.body = policy_text("enforce")
        assert (await c.policy("dest.test")).id == "7"
        # a new id whose fetch fails keeps the cached policy in force
        dns_server.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=8"', 0)])
        policy_server.status = 500
        assert (await c.policy("dest.test")).id == "7"
        # no address for the policy host: no policy (nothing cached for that domain)
        dns_server.add("other.test", [("MX", "10 mx.dest.test")])
        dns_server.add("_mta-sts.other.test", [("TXT", '"v=STSv1; id=1"', 0)])
        assert await c.policy("other.test") is None
    run(main())


# --- enforcement in the delivery path ------------------------------------------------

def message(*rcpts: str) -> OutMessage:
    return OutMessage("Q1", "from@src.test", tuple(OutRcpt(r, index=i) for i, r in enumerate(rcpts)),
                      b"Subject: t\r\n\r\nhello\r\n")


def deliver(ca, dns_server, policy_server, port: int, msgs: int = 1, sts: bool = True):
    """Deliver `msgs` messages to dest.test the way the queue manager does; results per message."""
    async def main():
        r = resolver(dns_server)
        tls = OutboundTls(MtaStsCache(r, port=policy_server.port, ca_file=ca.path, timeout=5.0)
                          if sts else None)
        smtp = client()
        opts = SmtpOptions(helo="client.test", connect_timeout=5.0, ca_file=ca.path)
        out = []
        for _ in range(msgs):
            res, policy = await asyncio.gather(r.resolve("dest.test", port), tls.policy("dest.test"))
            assert res.ok
            out.append(await tls.deliver(smtp, "mx:dest.test", "dest.test", policy, res.targets, opts,
                                         message("rcpt@dest.test")))
        await smtp.close()
        return out, tls.counters.snapshot()
    return run(main())


def test_enforce_with_valid_tls_delivers_verified(ca, dns_server, policy_server):
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test")) as (port, sink):
        results, counts = deliver(ca, dns_server, policy_server, port, msgs=3)
    assert [(r[0].code, r[0].tls, r[0].policy, r[0].tls_failure) for r in results] \
        == [(250, "verified", "mta-sts-enforce", None)] * 3
    assert len(sink.messages) == 3 and all(m["tls"] for m in sink.messages)
    assert policy_server.count == 1  # one fetch for the three messages
    assert counts == [{"domain": "dest.test", "policy": "mta-sts-enforce", "sessions": 3, "failed": 0,
                       "tls": {"verified": 3}, "failures": {}}]


def test_enforce_without_starttls_defers_and_sends_nothing(ca, dns_server, policy_server):
    with smtp_peer(MX_IP) as (port, sink):
        results, counts = deliver(ca, dns_server, policy_server, port, msgs=2)
    (r,) = results[0]
    assert (r.code, r.enhanced, r.tls, r.policy, r.tls_failure) \
        == (451, "4.7.5", "failed", "mta-sts-enforce", "starttls-not-supported")
    assert r.status == "deferred" and "STARTTLS" in r.text
    assert sink.messages == []  # nothing went in clear
    assert counts[0]["failed"] == 2 and counts[0]["failures"] == {"starttls-not-supported": 2}


def test_enforce_with_a_certificate_for_another_name_defers(ca, dns_server, policy_server):
    with smtp_peer(MX_IP, ca.server_context("mx.other.test")) as (port, sink):
        results, _ = deliver(ca, dns_server, policy_server, port)
    (r,) = results[0]
    assert (r.code, r.enhanced, r.tls, r.tls_failure) == (451, "4.7.5", "failed", "certificate-host-mismatch")
    assert sink.messages == []


def test_enforce_with_an_expired_certificate_defers(ca, dns_server, policy_server):
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test", expired=True)) as (port, sink):
        results, _ = deliver(ca, dns_server, policy_server, port)
    (r,) = results[0]
    assert (r.code, r.tls, r.tls_failure) == (451, "failed", "certificate-expired")
    assert sink.messages == []


def test_enforce_with_no_matching_mx_defers_without_connecting(ca, dns_server, policy_server):
    policy_server.body = policy_text("enforce", ("mx.elsewhere.test", "*.mx.dest.test"))
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test")) as (port, sink):
        results, counts = deliver(ca, dns_server, policy_server, port)
    (r,) = results[0]
    assert (r.code, r.enhanced, r.text) == (451, "4.7.5", "MTA-STS: no MX host matches the policy")
    assert (r.tls, r.policy, r.tls_failure) == (None, "mta-sts-enforce", "mx-mismatch")
    assert sink.messages == []
    assert counts[0]["tls"] == {"no-session": 1} and counts[0]["failures"] == {"mx-mismatch": 1}


def test_wildcard_mx_pattern_matches(ca, dns_server, policy_server):
    policy_server.body = policy_text("enforce", ("*.dest.test",))
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test")) as (port, sink):
        results, _ = deliver(ca, dns_server, policy_server, port)
    assert (results[0][0].code, results[0][0].tls) == (250, "verified")


def test_testing_mode_delivers_and_reports_what_would_fail(ca, dns_server, policy_server, caplog):
    policy_server.body = policy_text("testing")
    caplog.set_level(logging.WARNING, "mta.mtasts")
    with smtp_peer(MX_IP) as (port, sink):  # no STARTTLS
        results, counts = deliver(ca, dns_server, policy_server, port)
    (r,) = results[0]
    assert (r.code, r.tls, r.policy, r.tls_failure) == (250, "none", "mta-sts-testing", "starttls-not-supported")
    assert len(sink.messages) == 1 and not sink.messages[0]["tls"]
    assert counts == [{"domain": "dest.test", "policy": "mta-sts-testing", "sessions": 1, "failed": 0,
                       "tls": {"none": 1}, "failures": {}, "would_fail": {"starttls-not-supported": 1}}]
    assert "would fail under enforce" in caplog.text
    # a non-matching MX in testing mode: delivered too, reported as mx-mismatch
    policy_server.body = policy_text("testing", ("mx.elsewhere.test",))
    dns_server.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=2"', 0)])
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test")) as (port, sink):
        results, counts = deliver(ca, dns_server, policy_server, port)
    (r,) = results[0]
    assert (r.code, r.tls, r.tls_failure) == (250, "opportunistic", "mx-mismatch")
    assert counts[0]["would_fail"] == {"mx-mismatch": 1}


def test_testing_mode_with_valid_tls_is_verified(ca, dns_server, policy_server):
    policy_server.body = policy_text("testing")
    with smtp_peer(MX_IP, ca.server_context("mx.dest.test")) as (port, sink):
        results, counts = deliver(ca, dns_server, policy_server, port)
    (r,) = results[0]
    assert (r.code, r.tls, r.policy, r.tls_failure) == (250, "verified", "mta-sts-testing", None)
    assert "would_fail" not in counts[0]


def test_no_policy_mode_none_and_disabled_deliver_as_usual(ca, dns_server, policy_server):
    with smtp_peer(MX_IP) as (port, sink):
        dns_server.add("_mta-sts.dest.test", [])
        results, _ = deliver(ca, dns_server, policy_server, port)
        assert [(r.code, r.tls, r.policy) for r in results[0]] == [(250, "none", "none")]
        dns_server.add("_mta-sts.dest.test", [("TXT", '"v=STSv1; id=1"', 0)])
        policy_server.body = "version: STSv1\nmode: none\nmax_age: 60\n"
        results, _ = deliver(ca, dns_server, policy_server, port)
        assert [(r.code, r.tls, r.policy) for r in results[0]] == [(250, "none", "none")]
        policy_server.body = policy_text("enforce")
        results, _ = deliver(ca, dns_server, policy_server, port, sts=False)  # mta_sts = false
        assert [(r.code, r.tls, r.policy) for r in results[0]] == [(250, "none", "none")]
    with smtp_peer(MX_IP, ca.server_context("mx.other.test")) as (port, sink):
        dns_server.add("_mta-sts.dest.test", [])
        results, _ = deliver(ca, dns_server, policy_server, port)  # opportunistic: not verified
        assert [(r.code, r.tls, r.policy) for r in results[0]] == [(250, "opportunistic", "none")]


def test_counters_report_logs_json_and_resets(caplog):
    caplog.set_level(logging.INFO, "mta.mtasts")
    c = TlsCounters()
    c.add("a.test", "mta-sts-enforce", "verified", None)
    c.add("a.test", "mta-sts-enforce", "failed", "certificate-expired")
    c.add("b.test", "none", "opportunistic", None)
    records = c.report()
    assert [r["domain"] for r in records] == ["a.test", "b.test"]
    lines = [json.loads(m.split(" ", 1)[1]) for m in caplog.messages if m.startswith("tls-report ")]
    assert lines[0]["sessions"] == 2 and lines[0]["failed"] == 1
    assert lines[0]["failures"] == {"certificate-expired": 1} and "start" in lines[0] and "end" in lines[0]
    assert c.snapshot() == []


def test_report_every_interval_and_at_stop(caplog):
    caplog.set_level(logging.INFO, "mta.mtasts")

    async def main():
        t = OutboundTls(None, report_interval=0.2)
        t.start()
        t.counters.add("a.test", "none", "none", None)
        await asyncio.sleep(0.35)
        t.counters.add("b.test", "none", "none", None)
        await t.stop()
    run(main())
    domains = [json.loads(m.split(" ", 1)[1])["domain"] for m in caplog.messages if m.startswith("tls-report ")]
    assert domains == ["a.test", "b.test"]


def test_counters_stay_bounded(caplog):
    caplog.set_level(logging.INFO, "mta.mtasts")
    c = TlsCounters()
    c.max_keys = 3
    for i in range(5):
        c.add(f"d{i}.test", "none", "none", None)
    assert sum(m.startswith("tls-report ") for m in caplog.messages) == 3  # d0..d2 reported early
    assert [r["domain"] for r in c.snapshot()] == ["d3.test", "d4.test"]
