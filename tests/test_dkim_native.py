"""mta._native's DKIM and ARC (rust/src/dkim) against dkimpy: what we sign dkimpy verifies,
what dkimpy signs or seals we verify, and tampering fails both ways. Keys are published
through the loopback DNS server where a lookup is part of the path."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import dkim
import pytest
from dnsserver import dns_server  # noqa: F401  (the fixture)
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mta import _native as n
from mta._native import (ArcChain, DkimKey, DkimPublicKey, DkimSigner, Headers, Message, Spool, arc_chain,
                         arc_verify, dkim_body_hash, dkim_sign, dkim_signatures, dkim_verify)
from mta.delivery.mx import MxResolver

HEAD = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hello  there\r\n"
        b"\tfolded\r\nDate: Sat, 05 Dec 2026 09:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n")
NOW = int(time.time())


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, DkimKey]]:
    """PEMs and our keys: RSA 2048 (PKCS#1) and Ed25519 (PKCS#8)."""
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rpem = r.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption())
    e = ed25519.Ed25519PrivateKey.generate()
    epem = e.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return {"rsa": (rpem, DkimKey(rpem)), "ed25519": (epem, DkimKey(epem)),
            "ed25519-raw": (e.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption()), None)}


def needs(alg: str) -> None:
    if alg == "ed25519":
        pytest.importorskip("nacl", reason="dkimpy needs PyNaCl for ed25519")


def dnsfunc(records: dict[str, str]):
    return lambda name, timeout=5: records.get(name.decode().rstrip("."), "").encode() or None


def body_of(size: int) -> bytes:
    line = b"The quick brown fox  jumps over the lazy dog.\t \r\n"
    return (line * (size // len(line) + 1))[:size - 2] + b"\r\n"


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
@pytest.mark.parametrize("size", [1024, 1 << 20])
def test_mta_signed_verifies_in_dkimpy(keys, alg, canon, size):
    needs(alg)
    key = keys[alg][1]
    body = body_of(size)
    signer = DkimSigner("example.com", "s1", key, canonicalization=canon, expire=3600)
    [field] = dkim_sign(HEAD + b"\r\n", body, [signer], NOW)
    assert field.startswith(b"DKIM-Signature: v=1; a=" + key.algorithm.encode()) and field.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    records = {"s1._domainkey.example.com": key.public_record()}
    msg = field + HEAD + b"\r\n" + body
    assert dkim.verify(msg, dnsfunc=dnsfunc(records))
    # ours agrees, and tampering fails in both
    [sig] = dkim_signatures(field + HEAD)
    assert sig.error is None and sig.canonicalization == canon and sig.expiration == NOW + 3600
    assert sig.headers == ["from", "from", "subject", "date", "to", "message-id", "mime-version", "content-type"]
    pub = DkimPublicKey(key.public_record())
    assert dkim_verify(field + HEAD, body, [(sig, pub)], NOW) == [("pass", "")]
    bad = body[:100] + b"X" + body[101:]
    assert not dkim.verify(field + HEAD + b"\r\n" + bad, dnsfunc=dnsfunc(records))
    assert dkim_verify(field + HEAD, bad, [(sig, pub)], NOW) == [("fail", "body hash did not verify")]


def test_dual_signing_shares_and_verifies(keys):
    needs("ed25519")
    a = DkimSigner("example.com", "r", keys["rsa"][1])
    b = DkimSigner("example.com", "e", keys["ed25519"][1], identity="alice@example.com")
    fields = dkim_sign(HEAD, b"hi\r\n", [a, b], NOW)
    assert len(fields) == 2 and (a.algorithm, b.algorithm) == ("rsa-sha256", "ed25519-sha256")
    records = {"r._domainkey.example.com": keys["rsa"][1].public_record(),
               "e._domainkey.example.com": keys["ed25519"][1].public_record()}
    msg = b"".join(fields) + HEAD + b"\r\n" + b"hi\r\n"
    d = dkim.DKIM(msg)
    assert d.verify(0, dnsfunc=dnsfunc(records)) and d.verify(1, dnsfunc=dnsfunc(records))


@pytest.mark.parametrize("spill_threshold", [0, 1 << 30])
def test_message_body_streamed_from_spill_file(tmp_path, keys, spill_threshold):
    body = body_of(300_000)
    spool = Spool(str(tmp_path), spill_threshold=spill_threshold)
    msg = spool.new_message()
    spool.prepend(msg, b"Received: from us\r\n")
    data = HEAD + b"\r\n" + body
    for k in range(0, len(data), 8192):
        msg.push(data[k:k + 8192])
    assert msg.spilled == (spill_threshold == 0)
    signer = DkimSigner("example.com", "s1", keys["rsa"][1])
    [field] = dkim_sign(msg.header_block(), msg, [signer], NOW)
    records = {"s1._domainkey.example.com": keys["rsa"][1].public_record()}
    assert dkim.verify(field + HEAD + b"\r\n" + body, dnsfunc=dnsfunc(records))
    # the same body given as bytes gives the same body hash
    [again] = dkim_sign(HEAD, body, [signer], NOW)
    assert dkim_signatures(field)[0].b_prefix and field.split(b"bh=")[1][:44] == again.split(b"bh=")[1][:44]
    # an edited header block does not move the body
    view = Headers(msg.header_block())
    view.add("X-Plugin", "1")
    msg.replace_header_block(view.block())
    [sig] = dkim_signatures(field + view.block())
    assert dkim_verify(field + view.block(), msg, [(sig, DkimPublicKey(records["s1._domainkey.example.com"]))],
                       NOW) == [("pass", "")]


def test_memory_message_without_empty_line(keys):
    msg = Message()
    msg.push(HEAD)
    msg.finish_headers()
    signer = DkimSigner("example.com", "s1", keys["rsa"][1], canonicalization="simple")
    [field] = dkim_sign(msg.header_block(), msg, [signer], NOW)
    [sig] = dkim_signatures(field)
    assert dkim_verify(field + HEAD, b"", [(sig, DkimPublicKey(keys["rsa"][1].public_record()))], NOW)[0][0] == "pass"


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")])
def test_dkimpy_signed_verifies_here(keys, dns_server, alg, canon):
    needs(alg)
    pem, key = keys[alg]
    priv = pem if alg == "rsa" else base64.b64encode(keys["ed25519-raw"][0])
    body = body_of(5000)
    msg = HEAD + b"\r\n" + body
    field = dkim.sign(msg, b"sel", b"example.com", priv, canonicalize=canon, linesep=b"\r\n",
                      signature_algorithm=key.algorithm.encode(),
                      include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    # the key comes from the loopback DNS server, as the verifier will fetch it
    dns_server.add("sel._domainkey.example.com", [("TXT", key.public_record())])
    resolver = MxResolver(dns_server.nameservers, port=dns_server.port, timeout=2)
    status, records = asyncio.run(resolver.query("sel._domainkey.example.com", "TXT"))
    assert status == "ok"
    pub = DkimPublicKey(records[0])
    assert (pub.algorithm, pub.bits) == (alg, key.bits)
    head = field + HEAD
    [sig] = dkim_signatures(head)
    assert sig.error is None and sig.key_name == "sel._domainkey.example.com"
    assert sig.canonicalization == "/".join(c.decode() for c in canon)
    assert dkim_verify(head, body, [(sig, pub)], NOW) == [("pass", "")]
    # changed signed header fails; an unsigned one added is fine; an added From fails
    # only where h= over-signs it (dkimpy lists From once here: we check ours below)
    changed = head.replace(b"Subject: hello", b"Subject: hellO")
    assert dkim_verify(changed, body, [(dkim_signatures(changed)[0], pub)], NOW) == [
        ("fail", "signature did not verify")]
    extra = head + b"X-Unsigned: yes\r\n"
    assert dkim_verify(extra, body, [(dkim_signatures(extra)[0], pub)], NOW) == [("pass", "")]


def test_tampering_and_over_signing(keys):
    key = keys["rsa"][1]
    pub = DkimPublicKey(key.public_record())
    body = b"body\r\n"
    [field] = dkim_sign(HEAD, body, [DkimSigner("example.com", "s", key)], NOW)

    def result(head: bytes, b: bytes = body) -> tuple[str, str]:
        return dkim_verify(head, b, [(dkim_signatures(head)[0], pub)], NOW)[0]

    assert result(field + HEAD) == ("pass", "")
    assert result(field + HEAD, b"body!\r\n") == ("fail", "body hash did not verify")
    assert result(field + HEAD.replace(b"bob@", b"eve@")) == ("fail", "signature did not verify")
    assert result(field + b"From: Mallory <m@evil.example>\r\n" + HEAD) == ("fail", "signature did not verify")
    assert result(field + HEAD + b"From: Mallory <m@evil.example>\r\n") == ("fail", "signature did not verify")
    assert result(field + HEAD + b"Received: by x\r\n") == ("pass", "")
    assert result(field + HEAD, b"body\r\n\r\n\r\n") == ("pass", "")  # trailing empty lines
    assert dkim_verify(field + HEAD, body, [(dkim_signatures(field + HEAD)[0], pub)], NOW) == [("pass", "")]
    ed = DkimPublicKey(keys["ed25519"][1].public_record())
    assert dkim_verify(field + HEAD, body, [(dkim_signatures(field + HEAD)[0], ed)], NOW) == [
        ("permerror", "key is ed25519, signature is rsa-sha256")]


def test_errors_are_value_errors(keys):
    for pem, why in [(b"junk", "not a PEM key"), (b"-----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----\n",
                                                  "EC keys")]:
        with pytest.raises(ValueError, match=why):
            DkimKey(pem)
    key = keys["rsa"][1]
    assert (key.algorithm, key.bits) == ("rsa-sha256", 2048)
    assert key.public_record().startswith("v=DKIM1; k=rsa; p=MIIB")
    assert keys["ed25519"][1].public_record().startswith("v=DKIM1; k=ed25519; p=")
    for kw, why in [({"canonicalization": "loose"}, "canonicalization"), ({"headers": ["To"]}, "from"),
                    ({"identity": "a@evil.com"}, "not within"), ({"domain": "bad domain"}, "domain")]:
        args = {"domain": "example.com", "selector": "s", "key": key, **kw}
        with pytest.raises(ValueError, match=why):
            DkimSigner(**args)
    with pytest.raises(ValueError, match="key revoked"):
        DkimPublicKey("v=DKIM1; p=")
    with pytest.raises(TypeError):
        dkim_sign(HEAD, "text", [DkimSigner("example.com", "s", key)], NOW)


def test_signature_errors_and_limits():
    [s] = dkim_signatures(b"DKIM-Signature: v=1; a=rsa-sha1; d=x; s=y; h=from; bh=AA==; b=AA==\r\n")
    assert s.error.startswith("unknown algorithm")
    many = b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test; s=y; h=from; bh=AA==; b=AA==\r\n" * 33
    sigs = dkim_signatures(many)
    assert [x.error for x in sigs[31:]] == [None, "too many signatures"]
    assert sigs[0].identity == "@x.test" and sigs[0].key_name == "y._domainkey.x.test"


def arc_seal(msg: bytes, domain: bytes, pem: bytes) -> bytes:
    fields = dkim.arc_sign(msg, b"arc", domain, pem, domain, linesep=b"\r\n")
    return b"".join(fields) + msg


@pytest.fixture(scope="module")
def arc_messages(keys):
    pytest.importorskip("authres", reason="dkimpy needs authres for ARC")
    pem = keys["rsa"][0]
    body = body_of(4000)
    m0 = b"Authentication-Results: relay1.example; spf=pass smtp.mailfrom=example.com\r\n" + HEAD + b"\r\n" + body
    m1 = arc_seal(m0, b"relay1.example", pem)
    m2 = arc_seal(b"Authentication-Results: relay2.example; arc=pass\r\n" + m1, b"relay2.example", pem)
    pub = keys["rsa"][1].public_record()
    records = {"arc._domainkey.relay1.example": pub, "arc._domainkey.relay2.example": pub}
    assert dkim.arc_verify(m2, dnsfunc=dnsfunc(records))[0] == b"pass"
    return body, m1, m2, records


def split(msg: bytes) -> tuple[bytes, bytes]:
    head, body = msg.split(b"\r\n\r\n", 1)
    return head + b"\r\n", body


def arc_result(msg: bytes, records: dict[str, str], body: bytes | None = None) -> tuple[str, str]:
    head, b = split(msg)
    chain = arc_chain(head)
    keys = {k: DkimPublicKey(records[k]) for k in chain.key_names if k in records}
    return arc_verify(head, b if body is None else body, chain, keys, NOW)


def test_arc_chains_sealed_by_dkimpy_pass(arc_messages):
    body, m1, m2, records = arc_messages
    for msg, n_inst in [(m1, 1), (m2, 2)]:
        chain = arc_chain(split(msg)[0])
        assert isinstance(chain, ArcChain)
        assert (chain.status, chain.instances) == ("check", n_inst)
        assert arc_result(msg, records) == ("pass", "")
    assert arc_chain(HEAD).status == "none"
    assert arc_chain(split(m2)[0]).key_names == ["arc._domainkey.relay1.example", "arc._domainkey.relay2.example"]


def test_arc_tampering_fails(arc_messages):
    body, m1, m2, records = arc_messages
    assert arc_result(m2, records, body + b"x\r\n") == ("fail", "ARC-Message-Signature i=2: body hash did not verify")
    head = split(m2)[0]
    # a seal's signed byte changed: the seal no longer verifies (the AMS does not cover it)
    seal = head.index(b"ARC-Seal: i=1")
    t = head.index(b"t=", seal)
    tampered = head[:t] + b"t=1" + head[t + 2:]
    r = arc_verify(tampered, body, arc_chain(tampered), {k: DkimPublicKey(v) for k, v in records.items()}, NOW)
    assert r[0] == "fail" and "ARC-Seal i=" in r[1]
    assert arc_result(m2, {"arc._domainkey.relay2.example": records["arc._domainkey.relay2.example"]}) == (
        "fail", "no key for arc._domainkey.relay1.example")
    # a removed instance breaks the structure
    broken = head.replace(b"ARC-Seal: i=1", b"ARC-Seal: i=3")
    chain = arc_chain(broken)
    assert chain.status == "fail" and chain.reason
    assert arc_verify(broken, body, chain, {}, NOW)[0] == "fail"


def test_headers_remove_nth():
    view = Headers(b"A-R: 1\r\nX: a\r\nA-R: 2\r\nA-R: 3\r\n")
    assert view.remove_nth("a-r", 1) is True
    assert view.block() == b"A-R: 1\r\nX: a\r\nA-R: 3\r\n"
    assert view.remove_nth("A-R", 5) is False
    with pytest.raises(TypeError):
        Headers(b"X: 1\r\n", readonly=True).remove_nth("X", 0)


LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=200, deadline=None)
@given(st.lists(LINE, max_size=8), st.lists(st.integers(min_value=0, max_value=400), max_size=6),
       st.sampled_from(["simple", "relaxed"]), st.one_of(st.none(), st.integers(0, 300)))
def test_body_hash_is_the_same_for_every_split(lines, cuts, canon, length):
    body = b"".join(line + b"\r\n" for line in lines)
    cuts = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    assert dkim_body_hash(chunks, canon, length) == dkim_body_hash([body], canon, length)
    if length is None:
        policy = dkim.canonicalization.Relaxed if canon == "relaxed" else dkim.canonicalization.Simple
        assert dkim_body_hash(chunks, canon) == hashlib.sha256(policy.canonicalize_body(body)).digest()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_dkim_signatures_and_arc_chain_never_raise(data):
    block = b"DKIM-Signature:" + data + b"\r\nARC-Seal:" + data[::-1] + b"\r\n"
    for s in dkim_signatures(block) + dkim_signatures(data):
        assert s.error is None or isinstance(s.error, str)
        _ = (s.headers, s.key_name, s.b_prefix, s.canonicalization)
    assert arc_chain(data).status in ("none", "fail", "check")
    assert arc_chain(block).status in ("none", "fail", "check")
    with pytest.raises(ValueError):  # "; p=" makes any record invalid: a reason, never a crash
        DkimPublicKey(data.decode("latin-1") + "; p=")


def test_module_exports():
    for name in ("DkimKey", "DkimSigner", "DkimSignature", "DkimPublicKey", "ArcChain", "dkim_sign",
                 "dkim_signatures", "dkim_verify", "dkim_body_hash", "arc_chain", "arc_verify"):
        assert hasattr(n, name)


@pytest.mark.parametrize("algorithm", ["rsa2048", "ed25519"])
def test_keygen_keys_load_with_the_same_record(algorithm):
    from mta.policy import dkimkeys
    pem, record = dkimkeys.generate(algorithm)
    key = DkimKey(pem)
    assert key.public_record() == record
    assert DkimPublicKey(record).bits == key.bits
