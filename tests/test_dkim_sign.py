"""The DKIM signer as the server runs it: keys read from [[dkim.sign]] (errors naming the
table, key file and domain), which messages get which key, and messages signed through the
real session (mta.testing) verified by dkimpy, an independent implementation."""

import logging

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mta.config import load
from mta.errors import ConfigError
from mta.plugin import Continue
from mta.policy import dkimkeys
from mta.policy.dkim import Keyring
from mta.testing import ScriptedSession

MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
           b"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
           b"Hello Bob.\r\n\r\nBye.\r\n")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key files and their published records: {selector: (path, record)}."""
    d = tmp_path_factory.mktemp("dkim")
    out = {}
    for selector, algorithm in (("rsa", "rsa2048"), ("ed", "ed25519"), ("sub", "ed25519")):
        files = dkimkeys.write(str(d), "example.com", selector, algorithm)
        out[selector] = (files.private, files.record)
    return out


def dnsfunc(keys):
    def lookup(name, timeout=5):
        for selector, (_path, record) in keys.items():
            if name.decode().rstrip(".") == f"{selector}._domainkey.example.com":
                return record.encode()
        return None
    return lookup


def tables(keys, *selectors, **extra):
    return [dict({"domain": "example.com", "selector": s, "key": keys[s][0]}, **extra) for s in selectors]


def dkim_cfg(sign, **dkim_keys):
    return load(None, {"dkim.sign": sign, **{f"dkim.{k}": v for k, v in dkim_keys.items()}}).dkim


# --- keys --------------------------------------------------------------------------------------

def test_keyring_reads_rsa_and_ed25519_keys(keys):
    ring = Keyring.from_config(dkim_cfg(tables(keys, "rsa", "ed")))
    assert [s.algorithm for s in ring.signers["example.com"]] == ["rsa-sha256", "ed25519-sha256"]


def test_unusable_keys_are_config_errors_naming_table_file_and_domain(keys, tmp_path):
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key\n")
    sign = tables(keys, "rsa") + [
        {"domain": "example.org", "selector": "s1", "key": str(tmp_path / "missing.pem")},
        {"domain": "example.org", "selector": "s2", "key": str(ec_key)},
        {"domain": "example.org", "selector": "s3", "key": str(garbage)},
    ]
    with pytest.raises(ConfigError) as info:
        Keyring.from_config(dkim_cfg(sign))
    errs = info.value.errors
    assert len(errs) == 3
    assert errs[0].startswith(f"dkim.sign[1] s1._domainkey.example.org ({tmp_path}/missing.pem): cannot read")
    assert errs[1].startswith(f"dkim.sign[2] s2._domainkey.example.org ({ec_key}): not a usable DKIM private key")
    assert errs[2].startswith(f"dkim.sign[3] s3._domainkey.example.org ({garbage}): not a usable DKIM private key")


def test_send_unsigned_skips_a_bad_key_and_logs_it(keys, tmp_path, caplog):
    sign = tables(keys, "rsa") + [{"domain": "example.org", "selector": "s1", "key": str(tmp_path / "none.pem")}]
    with caplog.at_level(logging.ERROR, logger="mta.dkim"):
        ring = Keyring.from_config(dkim_cfg(sign, on_key_error="send-unsigned"))
    assert set(ring.signers) == {"example.com"}
    assert "s1._domainkey.example.org" in caplog.text and "unsigned" in caplog.text


# --- which key for which message ----------------------------------------------------------------

def test_choose_by_from_domain_parent_default_and_notes(keys):
    ring = Keyring.from_config(dkim_cfg(tables(keys, "rsa", "ed"), default_domain="example.com"))
    both = ring.signers["example.com"]
    assert ring.choose("example.com", trusted=True) == both
    assert ring.choose("News.Example.COM", trusted=True) == both  # a subdomain: the parent's keys
    assert ring.choose("example.org", trusted=True) == both  # the default domain, for trusted mail
    assert ring.choose(None, trusted=True) == both
    assert ring.choose("example.com", trusted=False) == []  # untrusted: not signed
    assert ring.choose("example.com", trusted=True, asked={"sign": False}) == []
    assert ring.choose("example.org", trusted=False, asked={"domain": "example.com", "selector": "ed"}) == [both[1]]
    assert ring.choose("example.com", trusted=True, asked={"domain": "example.net"}) is None
    assert ring.choose("example.com", trusted=True, asked={"domain": "example.com", "selector": "x"}) is None


def test_no_default_domain_and_sign_untrusted(keys):
    ring = Keyring.from_config(dkim_cfg(tables(keys, "ed"), sign_untrusted=True))
    assert ring.choose("example.org", trusted=True) == []
    assert ring.choose("example.com", trusted=False) == ring.signers["example.com"]
    assert ring.choose("com", trusted=True) == []  # a parent is never a bare TLD's key


# --- through the session --------------------------------------------------------------------------

def send(s, message=MESSAGE, sender="alice@example.com"):
    s.ehlo("client.example.com")
    assert s.mail(sender).code == 250
    assert s.rcpt("bob@example.net").code == 250
    return s.data(message)


@pytest.mark.parametrize("selectors", [("rsa",), ("ed",), ("rsa", "ed")])
def test_trusted_mail_is_signed_and_verifies_in_dkimpy(keys, selectors):
    with ScriptedSession(peer_ip="127.0.0.1", config={"dkim.sign": tables(keys, *selectors)}) as s:
        r = send(s)
    assert r.code == 250
    stored = r.message
    fields = [f for f in stored.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if f.startswith(b"DKIM-Signature:")]
    assert len(fields) == len(selectors)
    assert stored.startswith(b"DKIM-Signature:")  # on top, above our Received
    d = dkim.DKIM(stored)
    for i in range(len(selectors)):
        assert d.verify(idx=i, dnsfunc=dnsfunc(keys)), (selectors, i)
    tampered = stored.replace(b"Hello Bob.", b"Hello Rob.")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc(keys))


def test_simple_canonicalization_and_expiry(keys):
    sign = tables(keys, "rsa", canonicalization="simple/simple", expire="1d")
    with ScriptedSession(peer_ip="127.0.0.1", config={"dkim.sign": sign}) as s:
        r = send(s)
    sig = r.headers.get("DKIM-Signature")
    assert "c=simple/simple" in sig.replace(" ", "") and "x=" in sig
    assert dkim.verify(r.message, dnsfunc=dnsfunc(keys))


def test_untrusted_mail_is_not_signed_unless_configured(keys):
    cfg = {"dkim.sign": tables(keys, "ed"), "relay_domains": ["example.net"]}
    with ScriptedSession(config=cfg) as s:
        assert "DKIM-Signature" not in send(s).headers
    with ScriptedSession(config={**cfg, "dkim.sign_untrusted": True}) as s:
        r = send(s)
    assert dkim.verify(r.message, dnsfunc=dnsfunc(keys))


def test_from_domain_without_key_is_not_signed(keys):
    other = MESSAGE.replace(b"alice@example.com", b"alice@example.org")
    with ScriptedSession(peer_ip="127.0.0.1", config={"dkim.sign": tables(keys, "ed")}) as s:
        assert "DKIM-Signature" not in send(s, other).headers


class Rewriter:
    """Edits the message at on_message and picks the key: the signer runs after it."""

    def on_message(self, tx, msg):
        msg.headers.replace("Subject", "rewritten by a plugin")
        msg.headers.add("X-Tenant", "blue")
        tx.notes["dkim"] = {"domain": "example.com", "selector": "ed"}
        return Continue()


def test_signer_runs_after_the_plugins_edits_and_takes_their_key_choice(keys):
    cfg = {"dkim.sign": tables(keys, "rsa", "ed", headers=["From", "Subject", "X-Tenant"])}
    with ScriptedSession(plugins=[Rewriter()], peer_ip="127.0.0.1", config=cfg) as s:
        r = send(s)
    assert r.headers.get("Subject") == "rewritten by a plugin"
    assert len(r.headers.get_all("DKIM-Signature")) == 1 and "s=ed;" in r.headers.get("DKIM-Signature")
    assert dkim.verify(r.message, dnsfunc=dnsfunc(keys))
    assert not dkim.verify(r.message.replace(b"blue", b"bleu"), dnsfunc=dnsfunc(keys))


def test_submission_fixups_are_signed(keys):
    bare = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: no id\r\n\r\nbody\r\n"
    with ScriptedSession(listener="submission", tls=True, users={"alice@example.com": "pw"},
                         config={"dkim.sign": tables(keys, "ed"), "auth.sender_login_default": "self"}) as s:
        s.ehlo("laptop")
        assert s.auth("alice@example.com", "pw").code == 235
        assert s.mail("alice@example.com").code == 250
        assert s.rcpt("bob@example.net").code == 250
        r = s.data(bare)
    sig = r.headers.get("DKIM-Signature").lower()
    assert "message-id" in sig and "date" in sig
    assert r.headers.get("Message-ID") and r.headers.get("Date")
    assert dkim.verify(r.message, dnsfunc=dnsfunc(keys))


class Hold:
    def on_message(self, tx, msg):
        tx.hold = True


def test_a_held_message_is_stored_held():
    with ScriptedSession(plugins=[Hold()], peer_ip="127.0.0.1") as s:
        r = send(s)
        assert r.code == 250
        assert s.store.stored[r.queue_id]["held"] is True


def test_openssl_rsa_gives_the_same_signature_as_the_rust_rsa(keys):
    """PKCS#1 v1.5 is deterministic: the OpenSSL operation the signer uses (faster) and the
    pure-Rust one must give the same bytes."""
    from mta import _native
    from mta.policy.dkim import openssl_rsa

    pem = open(keys["rsa"][0], "rb").read()
    key = _native.DkimKey(pem)
    body = b"Hello Bob.\r\n\r\nBye.\r\n"
    head = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    rust = _native.dkim_sign(head, body, [_native.DkimSigner("example.com", "rsa", key)], 1796460000)
    ssl = _native.dkim_sign(head, body, [_native.DkimSigner("example.com", "rsa", key, sign_digest=openssl_rsa(pem))],
                            1796460000)
    assert rust == ssl


def test_a_failing_signature_is_451_never_unsigned(keys):
    from mta import _native

    def broken(digest):
        raise RuntimeError("HSM unplugged")

    bad = _native.DkimSigner("example.com", "rsa", _native.DkimKey(open(keys["rsa"][0], "rb").read()),
                             sign_digest=broken)
    with pytest.raises(ValueError, match="sign_digest failed.*HSM unplugged"):
        _native.dkim_sign(b"From: a@example.com\r\n", b"", [bad], 0)


class BrokenKey:
    """Asks for a key that does not exist: the message is refused for now, not sent unsigned."""

    def on_message(self, tx, msg):
        tx.notes["dkim"] = {"domain": "example.com", "selector": "gone"}


def test_asking_for_a_missing_key_is_451_unless_send_unsigned(keys):
    with ScriptedSession(plugins=[BrokenKey()], peer_ip="127.0.0.1", config={"dkim.sign": tables(keys, "ed")}) as s:
        r = send(s)
    assert (r.code, r.reply.enhanced) == (451, "4.7.0")
    cfg = {"dkim.sign": tables(keys, "ed"), "dkim.on_key_error": "send-unsigned"}
    with ScriptedSession(plugins=[BrokenKey()], peer_ip="127.0.0.1", config=cfg) as s:
        r = send(s)
    assert r.code == 250 and "DKIM-Signature" not in r.headers
