"""The message checks as the server runs them (mta.policy.verify through the real session,
mta.testing): SPF, DKIM (messages signed by dkimpy), DMARC and ARC answered by the loopback
DNS server, one Authentication-Results field on top, forged ones removed, the DMARC actions,
and temperror (not a stalled session) when DNS does not answer."""

import asyncio
import base64
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from dnsserver import DNSServer
from mta.policy import dkimkeys
from mta.testing import ScriptedSession

PEER = "192.0.2.25"  # outside mynetworks: checked
BODY = b"Hello Bob.\r\n\r\nBye.\r\n"


def message(sender="alice@example.com", subject="hello", extra=b""):
    return extra + (f"From: Alice <{sender}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
                    f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n").encode() + BODY


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    rsa = dkimkeys.write(str(d), "example.com", "s1", "rsa2048")
    ed = dkimkeys.write(str(d), "example.com", "e1", "ed25519")
    zone = {
        "example.com": [("TXT", "v=spf1 ip4:192.0.2.25 -all"), ("MX", "10 mx.example.com")],
        "s1._domainkey.example.com": [("TXT", rsa.record)],
        "e1._domainkey.example.com": [("TXT", ed.record)],
        "_dmarc.example.com": [("TXT", "v=DMARC1; p=reject; pct=100")],
        "quarantined.example": [("TXT", "v=spf1 -all")],
        "_dmarc.quarantined.example": [("TXT", "v=DMARC1; p=quarantine")],
        "tagged.example": [("TXT", "v=spf1 -all")],
        "_dmarc.tagged.example": [("TXT", "v=DMARC1; p=none")],
        "slow.example": "timeout",
    }
    with DNSServer(zone) as srv:
        # dkimpy signs with an RSA PEM key, and with the raw 32-byte Ed25519 seed, base64
        seed = serialization.load_pem_private_key(open(ed.private, "rb").read(), None).private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        yield srv, {"s1": open(rsa.private, "rb").read(), "e1": base64.b64encode(seed)}


def session(world, **config):
    srv, _keys = world
    cfg = {"verify.enabled": True, "dns.nameservers": srv.nameservers, "dns.port": srv.port,
           "dns.timeout": 1, "local_domains": ["example.net"], "verify.authserv_id": "mx.test"}
    cfg.update(config)
    return ScriptedSession(peer_ip=PEER, config=cfg)


def signed(world, raw: bytes, selector="s1", canon=b"relaxed") -> bytes:
    _srv, keys = world
    sig = dkim.sign(raw, selector.encode(), b"example.com", keys[selector], canonicalize=(canon, canon),
                    signature_algorithm=b"ed25519-sha256" if selector == "e1" else b"rsa-sha256",
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"], linesep=b"\r\n")
    return sig + raw


def send(s, raw, sender="alice@example.com"):
    s.ehlo("mail.example.com")
    assert s.mail(sender).code == 250
    assert s.rcpt("bob@example.net").code == 250
    return s.data(raw)


def results(stored: bytes) -> str:
    """The one Authentication-Results field of ours, unfolded."""
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    fields = [f for f in head.replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
              if f.lower().startswith("authentication-results: mx.test")]
    assert len(fields) == 1, head
    return fields[0]


@pytest.mark.parametrize("selector,canon", [("s1", b"relaxed"), ("e1", b"relaxed"), ("s1", b"simple"),
                                            ("e1", b"simple")])
def test_signed_aligned_message_passes_everything(world, selector, canon):
    with session(world) as s:
        r = send(s, signed(world, message(), selector, canon))
    assert r.code == 250
    ar = results(r.message)
    assert "spf=pass" in ar and "smtp.mailfrom=alice@example.com" in ar
    assert "dkim=pass" in ar and "header.d=example.com" in ar and f"header.s={selector}" in ar
    assert "dmarc=pass" in ar and "header.from=example.com" in ar
    assert "arc=none" in ar
    assert r.notes["auth"]["spf"] == "pass" and r.notes["auth"]["dmarc"] == "pass"
    assert r.notes["auth"]["dkim"] == [{"result": "pass", "domain": "example.com"}]


def test_changed_body_fails_dkim_with_the_reason(world):
    raw = signed(world, message()).replace(b"Hello Bob.", b"Hello Rob.")
    with session(world) as s:
        ar = results(send(s, raw).message)
    assert "dkim=fail" in ar and "body hash" in ar
    assert "dmarc=pass" in ar  # SPF still passes aligned


def test_unsigned_message_from_wrong_ip_fails_dmarc_and_is_tagged_by_default(world):
    with session(world) as s:
        r = send(s, message(), sender="alice@tagged.example")
    ar = results(r.message)
    assert r.code == 250 and "spf=fail" in ar and "dkim=none" in ar and "dmarc=fail" in ar


def test_dmarc_reject_policy_refused_when_configured(world):
    with session(world, **{"verify.dmarc_reject": "reject"}) as s:
        s.ehlo("mail.example.com")
        s.mail("alice@example.com")
        s.rcpt("bob@example.net")
        r = s.data(message().replace(b"Hello Bob.", b"x"))  # unsigned; SPF passes, so DMARC passes
        assert r.code == 250
        s.mail("alice@elsewhere.example")  # SPF none, From example.com unsigned: DMARC fails
        s.rcpt("bob@example.net")
        r = s.data(message())
    assert r.code == 550 and r.reply.enhanced == "5.7.1" and "example.com" in r.reply.text


def test_quarantine_holds_the_message(world):
    with session(world, **{"verify.dmarc_reject": "quarantine"}) as s:
        r = send(s, message(sender="alice@quarantined.example"), sender="alice@quarantined.example")
        assert r.code == 250
        assert s.store.stored[r.queue_id]["held"] is True
        assert "dmarc=fail" in results(r.message)


def test_forged_results_claiming_our_id_are_removed_others_kept(world):
    forged = (b"Authentication-Results: mx.test; dkim=pass header.d=example.com\r\n"
              b"Authentication-Results: (comment) MX.TEST 1; spf=pass\r\n"
              b"Authentication-Results: other.example; spf=pass\r\n")
    with session(world) as s:
        stored = send(s, signed(world, message(extra=forged))).message
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"Authentication-Results:") == 2
    assert b"Authentication-Results: other.example; spf=pass" in head
    assert "dkim=pass" in results(stored)  # the signature did not cover the removed fields


def test_trusted_and_authenticated_mail_is_not_checked(world):
    srv, _ = world
    with ScriptedSession(peer_ip="127.0.0.1", config={"verify.enabled": True, "dns.nameservers": srv.nameservers,
                                                      "dns.port": srv.port}) as s:
        r = send(s, message())
    assert b"Authentication-Results" not in r.message and "auth" not in r.notes


def test_dns_that_does_not_answer_is_temperror_within_the_timeout(world):
    with session(world, **{"verify.timeout": 2}) as s:
        start = time.monotonic()
        r = send(s, message(sender="alice@slow.example"), sender="alice@slow.example")
        took = time.monotonic() - start
    assert r.code == 250 and took < 8
    ar = results(r.message)
    assert "spf=temperror" in ar


class Reader:
    """A plugin after the checks: it sees their results."""

    seen = None

    def on_message(self, tx, msg):
        Reader.seen = dict(tx.notes["auth"])


def test_plugins_see_the_results(world):
    srv, _ = world
    cfg = {"verify.enabled": True, "dns.nameservers": srv.nameservers, "dns.port": srv.port,
           "local_domains": ["example.net"]}
    with ScriptedSession(plugins=[Reader()], peer_ip=PEER, config=cfg) as s:
        send(s, signed(world, message()))
    assert Reader.seen["dkim"] == [{"result": "pass", "domain": "example.com"}] and Reader.seen["spf"] == "pass"


def test_a_big_message_is_verified_off_the_event_loop(world):
    big = message().replace(BODY, (b"x" * 998 + b"\r\n") * 1100)  # 1.1 MB: hashed on a thread
    with session(world) as s:
        r = send(s, signed(world, big))
    assert r.code == 250 and "dkim=pass" in results(r.message)


def test_rsa_signatures_are_checked_by_openssl_with_the_same_results(world):
    """The verifier gives RSA keys OpenSSL's check (verify_digest); it must agree with the
    extension's own check on good and bad signatures, and a failing hook falls back to it."""
    from mta import _native
    from mta.delivery.mx import MxResolver
    from mta.policy.dkim import openssl_rsa_verify

    srv, _keys = world
    head, body = signed(world, message()).split(b"\r\n\r\n", 1)
    head += b"\r\n"
    lookup = MxResolver(srv.nameservers, port=srv.port, timeout=1)
    _status, (record,) = asyncio.run(lookup.query("s1._domainkey.example.com", "TXT"))
    _status, (ed_record,) = asyncio.run(lookup.query("e1._domainkey.example.com", "TXT"))
    calls = []

    def counted(digest, signature, check=openssl_rsa_verify(_native.DkimPublicKey(record))):
        calls.append(len(digest))
        return check(digest, signature)

    def broken(digest, signature):
        raise RuntimeError("no OpenSSL today")

    keys = (_native.DkimPublicKey(record), _native.DkimPublicKey(record, verify_digest=counted),
            _native.DkimPublicKey(record, verify_digest=broken))
    for h, want in ((head, "pass"), (head.replace(b"hello", b"jello"), "fail")):
        sig = _native.dkim_signatures(h)[0]
        assert [_native.dkim_verify(h, body, [(sig, k)], int(time.time()))[0][0] for k in keys] == [want] * 3
    assert calls == [32, 32]  # the digest, once per check
    assert openssl_rsa_verify(_native.DkimPublicKey(ed_record)) is None
