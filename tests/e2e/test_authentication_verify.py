"""Verification end to end: a client outside mynetworks sends mta mail signed by dkimpy and by
OpenDKIM, with SPF and DMARC published on the loopback DNS server; the stored message carries
exactly one Authentication-Results field of ours, on top, with the right results. Tampering,
forged results, the DMARC reject/quarantine actions and a DNS that never answers are checked
against the same zone.
"""

from __future__ import annotations

import time

import dkim
import pytest
from conftest import start_server
from dkimkit import Unavailable, authres, dkimpy_sign, fields, make_key, publish
from dnsserver import DNSServer
from helpers import HOSTNAME, Client, check, dot_stuff, queued_id, stored_message
from opendkim import OpenDKIM, missing

AUTHSERV = HOSTNAME  # verify.authserv_id defaults to the host name (--hostname)
DNS_TIMEOUT, VERIFY_TIMEOUT = 1.0, 3.0
# (signer, key algorithm, canonicalization); OpenDKIM signs Ed25519 with relaxed headers only
# (its simple-header Ed25519 signatures are broken: see test_opendkim.py)
SIGNED = [("dkimpy", "rsa2048", "relaxed/relaxed"), ("dkimpy", "ed25519", "simple/simple"),
          ("opendkim", "rsa2048", "simple/simple"), ("opendkim", "ed25519", "relaxed/simple")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify-keys")
    out = {}
    for signer, alg, _c in SIGNED:
        sel = f"{signer[:2]}{alg[:2]}"
        out[(signer, alg)] = make_key(d, "sender.example", sel, alg)
    out["failspf"] = make_key(d, "failspf.example", "py", "rsa2048")
    out["arc"] = make_key(d, "sealer.example", "arc", "rsa2048")
    out["slow"] = make_key(d, "slow.example", "py", "ed25519")
    return out


@pytest.fixture(scope="module")
def dns(keys):
    zone = {
        "sender.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
        "_dmarc.sender.example": [("TXT", "v=DMARC1; p=reject")],
        "failspf.example": [("TXT", "v=spf1 -all")],
        "_dmarc.failspf.example": [("TXT", "v=DMARC1; p=reject")],
    }
    with DNSServer(zone) as srv:
        publish(srv, *keys.values())
        for name in ("slow.example", "_dmarc.slow.example", "py._domainkey.slow.example"):
            srv.behave(name, "timeout")
        yield srv


def verify_config(dns: DNSServer, dmarc_reject: str = "tag", dns_timeout: float = DNS_TIMEOUT,
                  verify_timeout: float = VERIFY_TIMEOUT) -> str:
    return f"""mynetworks = ["10.0.0.0/8"]
local_domains = ["local.example"]

[smtp]
greeting_delay = 0
reverse_dns = false

[dns]
nameservers = ["{dns.host}"]
port = {dns.port}
timeout = "{dns_timeout}s"

[verify]
dmarc_reject = "{dmarc_reject}"
timeout = "{verify_timeout}s"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory, dns):
    s = start_server(tmp_path_factory.mktemp("verifier"), config=verify_config(dns))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def odk(tmp_path_factory):
    reason = missing()
    if reason:
        return Unavailable(reason)
    return OpenDKIM(tmp_path_factory.mktemp("odk-signer"))  # signing asks no DNS


def message(subject: str, domain: str = "sender.example", extra: bytes = b"") -> bytes:
    return (f"From: Alice <alice@{domain}>\r\nTo: Bob <bob@local.example>\r\nSubject: {subject}\r\n"
            f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@{domain}>\r\n"
            ).encode() + extra + b"\r\nHello,  world \r\n\r\nsecond paragraph\r\n"


def sign(keys, odk_signer, signer: str, alg: str, canon: str, msg: bytes) -> bytes:
    key = keys[(signer, alg)]
    if signer == "dkimpy":
        return dkimpy_sign(msg, key, canonicalization=canon)
    return odk_signer.sign(msg, key.domain, key.selector, key.path, canonicalization=canon)


def deliver(srv, content: bytes, sender: str = "alice@sender.example") -> tuple[object, float]:
    """Send from 127.0.0.1 (outside mynetworks); the end-of-data reply and its wait."""
    with Client(srv.addr) as c:
        c.start()
        c.mail_rcpt(sender, ["bob@local.example"])
        c.expect("DATA", 354)
        started = time.monotonic()
        c.send(dot_stuff(content) + b".\r\n")
        reply = c.reply(timeout=60)
        waited = time.monotonic() - started
        c.quit()
    return reply, waited


def ours(stored: bytes, sent: bytes) -> dict[str, list[dict]]:
    """Our one Authentication-Results field (asserted: exactly one, and above every field of
    the message as sent), as method -> results."""
    got = fields(stored)
    added = len(got) - len(fields(sent))
    claiming = [(i, v) for i, (n, v) in enumerate(got) if n.lower() == "authentication-results"
                and authres(v)[0].lower() == AUTHSERV]
    assert len(claiming) == 1, claiming
    index, value = claiming[0]
    assert 0 <= index < added, (index, added, got[:added + 2])
    by_method: dict[str, list[dict]] = {}
    for r in authres(value)[1]:
        by_method.setdefault(r["method"], []).append(r)
    return by_method


def results_of(srv, content: bytes, sender: str = "alice@sender.example") -> dict[str, list[dict]]:
    reply, _ = deliver(srv, content, sender)
    return ours(stored_message(srv, queued_id(reply)), content)


# -- passing mail ------------------------------------------------------------------------

@pytest.mark.parametrize("signer, alg, canon", SIGNED)
def test_signed_mail_gets_one_authentication_results_with_passes(srv, keys, odk, signer, alg, canon):
    signed = sign(keys, odk, signer, alg, canon, message(f"{signer} {alg} {canon}"))
    r = results_of(srv, signed)
    key = keys[(signer, alg)]
    assert [x["result"] for x in r["spf"]] == ["pass"], r
    assert r["spf"][0]["props"].get("smtp.mailfrom") == "alice@sender.example", r
    [dkim] = r["dkim"]
    assert dkim["result"] == "pass", r
    assert (dkim["props"].get("header.d"), dkim["props"].get("header.s")) == ("sender.example", key.selector), r
    assert [x["result"] for x in r["dmarc"]] == ["pass"], r
    assert r["dmarc"][0]["props"].get("header.from") == "sender.example", r
    assert [x["result"] for x in r["arc"]] == ["none"], r


# -- failing mail ------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["body", "header"])
def test_a_changed_byte_fails_dkim(srv, keys, odk, change):
    signed = sign(keys, odk, "dkimpy", "rsa2048", "relaxed/relaxed", message(f"tampered {change}"))
    if change == "body":
        tampered = signed.replace(b"second paragraph", b"second paragrapH")
    else:
        tampered = signed.replace(b"Subject: tampered", b"Subject: Tampered")
    r = results_of(srv, tampered)
    [dkim] = r["dkim"]
    assert dkim["result"] == "fail", r
    if change == "body":
        assert "body hash" in (dkim["reason"] + " " + dkim["comments"]).lower(), dkim
    # SPF passes and is aligned: DMARC still passes
    assert (r["spf"][0]["result"], r["dmarc"][0]["result"]) == ("pass", "pass"), r


def test_changed_body_and_failing_spf_fail_dmarc(srv, keys):
    signed = dkimpy_sign(message("all fail", "failspf.example"), keys["failspf"])
    r = results_of(srv, signed.replace(b"second paragraph", b"second paragrapH"), "alice@failspf.example")
    assert [(m, r[m][0]["result"]) for m in ("spf", "dkim", "dmarc")] == \
        [("spf", "fail"), ("dkim", "fail"), ("dmarc", "fail")], r
    assert "p=reject" in r["dmarc"][0]["comments"], r  # the tag mode records, nothing more


def test_forged_results_of_ours_are_removed_others_kept(srv, keys):
    forged = (b"Authentication-Results: mx.example.test; dkim=pass header.d=sender.example header.b=FORGED1\r\n"
              b"Authentication-Results: MX.Example.TEST 1; spf=pass smtp.mailfrom=x@y.example (FORGED2)\r\n"
              b"Authentication-Results:\r\n (FORGED3) mx.example.test;\r\n dmarc=pass header.from=sender.example\r\n")
    other = b"Authentication-Results: relay.other.example; dkim=pass header.d=sender.example\r\n"
    signed = dkimpy_sign(message("forged"), keys[("dkimpy", "rsa2048")])
    content = forged + other + signed
    reply, _ = deliver(srv, content)
    stored = stored_message(srv, queued_id(reply))
    assert b"FORGED" not in stored, stored[:3000]
    assert other in stored
    got = fields(stored)
    # ours is the one left claiming our id (ours() checks), over the message as sent minus the forged three
    r = ours(stored, other + signed)
    assert [x["result"] for x in r["dkim"]] == ["pass"] and r["spf"][0]["result"] == "pass", r
    assert sum(1 for n, _v in got if n.lower() == "authentication-results") == 2, got


def test_arc_sealed_by_dkimpy_passes_and_a_broken_seal_fails(srv, keys):
    """An intermediary (dkimpy's arc_sign) checked and sealed the message: arc=pass; a body
    changed after the seal: arc=fail."""
    signed = dkimpy_sign(message("arc sealed"), keys[("dkimpy", "rsa2048")])
    upstream = b"Authentication-Results: relay.sealer.example; dkim=pass header.d=sender.example\r\n" + signed
    key = keys["arc"]
    seal = dkim.arc_sign(upstream, key.selector.encode(), key.domain.encode(), key.path.read_bytes(),
                         b"relay.sealer.example")
    sealed = b"".join(seal) + upstream
    assert [x["result"] for x in results_of(srv, sealed)["arc"]] == ["pass"]
    broken = sealed.replace(b"second paragraph", b"second paragrapH")
    assert [x["result"] for x in results_of(srv, broken)["arc"]] == ["fail"]


# -- DMARC actions -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reject", "quarantine"])
def test_dmarc_reject_policy_actions(tmp_path, dns, keys, mode):
    s = start_server(tmp_path, config=verify_config(dns, dmarc_reject=mode))
    try:
        failing = message(f"dmarc {mode}", "failspf.example")  # unsigned, SPF -all, p=reject
        reply, _ = deliver(s, failing, "alice@failspf.example")
        passing = dkimpy_sign(message(f"dmarc {mode} ok"), keys[("dkimpy", "rsa2048")])
        ok_id = queued_id(deliver(s, passing)[0])
        queue = {e["id"]: e for e in s.queue()}
    finally:
        s.stop()
    assert queue[ok_id]["held"] is False, queue
    if mode == "reject":
        check(reply, 550, "5.7.1")
        assert set(queue) == {ok_id}, queue
    else:
        held_id = queued_id(reply)
        assert queue[held_id]["held"] is True, queue


# -- DNS that never answers -------------------------------------------------------------

def test_dns_timeout_gives_temperror_within_the_verify_timeout(srv, keys):
    signed = dkimpy_sign(message("slow dns", "slow.example"), keys["slow"])
    reply, waited = deliver(srv, signed, "alice@slow.example")
    qid = queued_id(reply)
    assert waited < VERIFY_TIMEOUT + 2.0, waited
    r = ours(stored_message(srv, qid), signed)
    assert [(m, r[m][0]["result"]) for m in ("spf", "dkim", "dmarc")] == \
        [("spf", "temperror"), ("dkim", "temperror"), ("dmarc", "temperror")], r


def test_verify_timeout_cuts_slower_dns_short(tmp_path, dns, keys):
    """DNS would give up after 5 s, the checks' deadline is 1.5 s: the deadline wins."""
    s = start_server(tmp_path, config=verify_config(dns, dns_timeout=5.0, verify_timeout=1.5))
    try:
        signed = dkimpy_sign(message("slower dns", "slow.example"), keys["slow"])
        reply, waited = deliver(s, signed, "alice@slow.example")
        stored = stored_message(s, queued_id(reply))
    finally:
        s.stop()
    assert waited < 1.5 + 2.0, waited
    r = ours(stored, signed)
    assert [(m, r[m][0]["result"]) for m in ("spf", "dkim", "dmarc")] == \
        [("spf", "temperror"), ("dkim", "temperror"), ("dmarc", "temperror")], r
