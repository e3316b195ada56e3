"""The OpenDKIM wrapper proved against dkimpy before it judges mta: a dkimpy-signed message
verifies in OpenDKIM (keys over DNS on 127.0.0.153:53) and an OpenDKIM-signed one in dkimpy,
for both algorithms and canonicalizations; a changed body or signed header fails in both."""

from __future__ import annotations

import pytest
from dkimkit import (
    dkimpy_results,
    dkimpy_sign,
    make_key,
    opendkim_for,
    publish,
    start_port53,
)

MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: wrapper check\r\n"
           b"Date: Sat, 05 Dec 2026 09:00:00 +0000\r\nMessage-ID: <w1@example.com>\r\n\r\n"
           b"Hello,  world \r\n\r\nsecond  paragraph\r\n")


@pytest.fixture(scope="module")
def dns53():
    srv = start_port53()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"rsa": make_key(d, "example.com", "r1", "rsa2048"), "ed25519": make_key(d, "example.com", "e1", "ed25519")}


@pytest.fixture(scope="module")
def odk(dns53, keys, tmp_path_factory):
    publish(dns53, *keys.values())
    return opendkim_for(dns53, tmp_path_factory.mktemp("opendkim"))


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_dkimpy_signed_verifies_in_opendkim(odk, keys, alg, canon):
    key = keys[alg]
    signed = dkimpy_sign(MESSAGE, key, canonicalization=canon)
    ok, detail = odk.verify(signed)
    assert ok, detail
    [r] = odk.results(signed)
    assert (r["result"], r["d"], r["s"], r["a"]) == ("pass", "example.com", key.selector, key.algorithm), r
    # a changed body byte, and a changed signed header, fail
    assert odk.results(signed.replace(b"second", b"Second"))[0]["result"] == "fail"
    assert odk.results(signed.replace(b"wrapper check", b"wrapper checK"))[0]["result"] == "fail"


# OpenDKIM 2.11.0's own Ed25519 signatures with simple header canonicalization verify
# neither in dkimpy nor in OpenDKIM itself (RSA ones do, and dkimpy's Ed25519 simple ones
# verify in OpenDKIM): a bug of that signer, so the tests sign Ed25519 with relaxed headers.
ODK_ED25519_SIMPLE = pytest.mark.xfail(strict=True, reason="OpenDKIM 2.11.0 signs Ed25519 + simple headers wrongly")


@pytest.mark.parametrize("alg", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "relaxed/simple", "simple/simple"])
def test_opendkim_signed_verifies_in_dkimpy(odk, keys, alg, canon, request):
    key = keys[alg]
    if alg == "ed25519" and canon.startswith("simple"):
        request.applymarker(ODK_ED25519_SIMPLE)
    signed = odk.sign(MESSAGE, "example.com", key.selector, key.path, canonicalization=canon)
    assert signed.endswith(MESSAGE) and signed.startswith(b"DKIM-Signature: v=1; a=" + key.algorithm.encode())
    assert f"c={canon}".encode() in signed
    assert dkimpy_results(signed, list(keys.values())) == [(b"example.com", key.selector.encode(), True)]
    assert odk.verify(signed)[0]  # and in OpenDKIM itself
    assert dkimpy_results(signed.replace(b"second", b"Second"), list(keys.values()))[0][2] is False


def test_unsigned_and_unknown_keys(odk, keys, dns53, tmp_path):
    ok, _detail = odk.verify(MESSAGE)
    assert not ok and odk.results(MESSAGE) == []
    stranger = make_key(tmp_path, "example.com", "unpublished", "rsa2048")
    [r] = odk.results(dkimpy_sign(MESSAGE, stranger))
    assert r["result"] != "pass" and r["s"] == "unpublished"
