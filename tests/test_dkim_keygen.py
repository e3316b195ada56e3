"""`mta dkim keygen` (issue 21's key tool): the private key file (PEM, 0600, never
overwritten), its TXT record (one line; the public key of that private key, as RFC 6376 and
RFC 8463 publish it) and the zone line split into 255-octet strings."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mta.policy import dkimkeys


def keygen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "dkim", "keygen", *args], capture_output=True, text=True,
                          timeout=120)


def tags(record: str) -> dict[str, str]:
    return dict(t.strip().split("=", 1) for t in record.split(";"))


@pytest.mark.parametrize("algorithm, kind, bits", [("rsa2048", "rsa", 2048), ("rsa4096", "rsa", 4096),
                                                   ("ed25519", "ed25519", None)])
def test_keygen_writes_a_key_and_the_record_of_its_public_key(tmp_path, algorithm, kind, bits):
    out = tmp_path / "keys"
    r = keygen("--domain", "Example.COM.", "--selector", "s2026", "--out", str(out), "--algorithm", algorithm)
    assert r.returncode == 0, r.stderr
    private, txt = out / "s2026.private", out / "s2026.txt"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and stat.S_IMODE(os.stat(out).st_mode) == 0o700
    record = txt.read_text()
    assert record.endswith("\n") and record.count("\n") == 1 and '"' not in record
    t = tags(record.strip())
    assert (t["v"], t["k"]) == ("DKIM1", kind)
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    p = base64.b64decode(t["p"])
    data = b"the canonicalized header hash input"
    if kind == "rsa":
        assert private.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1: OpenDKIM, dkimpy
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == bits
        public = serialization.load_der_public_key(p)  # SubjectPublicKeyInfo, as RFC 6376 3.6.1 allows
        public.verify(key.sign(data, padding.PKCS1v15(), hashes.SHA256()), data, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey) and len(p) == 32  # the raw key (RFC 8463 4)
        ed25519.Ed25519PublicKey.from_public_bytes(p).verify(key.sign(data), data)
    # What it prints: the files, then the name and the zone line to publish.
    lines = r.stdout.splitlines()
    assert lines[1] == "publish this TXT record at s2026._domainkey.example.com:"
    assert lines[2].startswith("s2026._domainkey.example.com. IN TXT ( \"v=DKIM1; ")


def test_the_zone_line_splits_the_record_into_255_octet_strings(tmp_path):
    files = dkimkeys.write(str(tmp_path), "example.com", "big", "rsa4096")
    line = dkimkeys.zone_line(files)
    strings = line.split("( ", 1)[1].rsplit(" )", 1)[0].split('" "')
    strings = [s.strip('"') for s in strings]
    assert len(strings) == 3 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == files.record  # verifiers join the strings again (RFC 6376 3.6.2.2)


def test_an_existing_key_is_never_overwritten(tmp_path):
    assert keygen("--domain", "example.com", "--selector", "s1", "--out", str(tmp_path)).returncode == 0
    before = (tmp_path / "s1.private").read_bytes()
    r = keygen("--domain", "example.com", "--selector", "s1", "--out", str(tmp_path), "--algorithm", "ed25519")
    assert r.returncode == 1 and "exists: not overwritten" in r.stderr
    assert (tmp_path / "s1.private").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (("--domain", "not a domain", "--selector", "s1"), "is not a domain name"),
    (("--domain", "example.com", "--selector", "bad_selector!"), "is not a DNS label"),
    (("--domain", "example.com", "--selector", "-x"), "is not a DNS label"),
])
def test_bad_domains_and_selectors_are_refused_by_name(tmp_path, args, message):
    r = keygen(*args, "--out", str(tmp_path / "k"))
    assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "k").exists()


def test_selectors_may_have_several_labels():
    assert dkimkeys.valid_selector("s2026") and dkimkeys.valid_selector("mail.2026-a")
    assert not dkimkeys.valid_selector("a..b") and not dkimkeys.valid_selector("a-") and not dkimkeys.valid_selector("")
